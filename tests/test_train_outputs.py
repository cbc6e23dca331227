"""Live curves and samples: steps.csv, eval.csv and samples.md grow as training goes, a resume
neither repeats nor loses a row, and the finished curves are the ones write_history writes."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest

from tinyllm.training.loop import StoppedBy, fit
from tinyllm.training.outputs import LiveCurves, summary_of, write_history
from tinyllm.training.samples import SAMPLES_FILE, TrainingSamples


class Stop(Exception):
    pass


def rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def steps_in(directory) -> tuple[list[int], list[int]]:
    return ([int(r["step"]) for r in rows(directory / "steps.csv")],
            [int(r["step"]) for r in rows(directory / "eval.csv")])


PROMPTS = ["ROMEO:", ""]


@pytest.fixture
def run(gpt_config, train_config, tokens, tokenizer):
    cut = int(len(tokens) * 0.8)
    cfg = dataclasses.replace(train_config, max_steps=20, eval_interval=4, checkpoint_interval=5)

    def go(directory, checkpoints, *callbacks, logged=None):
        samples = TrainingSamples(directory, tokenizer, PROMPTS,
                                  logged.extend if logged is not None else None)
        return fit(gpt_config, cfg, tokens[:cut], tokens[cut:], checkpoint_dir=checkpoints,
                     callbacks=[LiveCurves(directory), samples, *callbacks])
    return go


def test_every_step_is_on_disk_when_its_callback_runs(run, tmp_path):
    seen = []

    def look(m):
        steps, evals = steps_in(tmp_path)
        assert steps == list(range(1, m.step + 1))
        assert evals == list(range(4, m.step + 1, 4))
        seen.append(m.step)

    logged = []
    result = run(tmp_path, None, look, logged=logged)
    assert seen == list(range(1, 21))
    assert [(r["step"], r["prompt"]) for r in logged] == [
        (step, prompt) for step in (4, 8, 12, 16, 20) for prompt in PROMPTS]
    assert all(len(r["text"]) == 100 for r in logged)
    samples = (tmp_path / SAMPLES_FILE).read_text()
    assert samples.count("## Step ") == 5 and "## Step 20 (validation loss " in samples
    assert all(f"```text\n{r['prompt']}{r['text']}\n```" in samples for r in logged)
    live = {name: (tmp_path / name).read_text() for name in ("steps.csv", "eval.csv")}
    write_history(tmp_path, result.history, {})
    assert live == {name: (tmp_path / name).read_text() for name in live}


def test_a_resume_rewrites_the_checkpoints_rows_then_appends(run, tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    logged_clean = []
    run(clean, tmp_path / "clean-checkpoints", logged=logged_clean)

    killed = tmp_path / "killed"
    killed.mkdir()

    def die_at_13(m):
        if m.step == 13:
            raise Stop

    with pytest.raises(Stop):
        run(killed, tmp_path / "checkpoints", die_at_13)
    assert steps_in(killed)[0] == list(range(1, 14))  # 11-13 are past the step-10 checkpoint

    first = []

    def look(m):
        if not first:
            first.append(steps_in(killed))

    logged = []
    run(killed, tmp_path / "checkpoints", look, logged=logged)
    assert first == [(list(range(1, 12)), [4, 8])]  # the checkpoint's 10 rows, then step 11
    assert logged == logged_clean  # the new run's table gets steps 4 and 8 from the checkpoint
    assert (killed / SAMPLES_FILE).read_text() == (clean / SAMPLES_FILE).read_text()
    timing = ("tokens_per_sec",)
    for name in ("steps.csv", "eval.csv"):
        strip = [{k: v for k, v in r.items() if k not in timing} for r in rows(clean / name)]
        assert strip == [{k: v for k, v in r.items() if k not in timing}
                         for r in rows(killed / name)]


def test_no_prompts_no_samples(gpt_config, train_config, tokens, tokenizer, tmp_path):
    cfg = dataclasses.replace(train_config, max_steps=4, eval_interval=2)
    fit(gpt_config, cfg, tokens[:200], tokens[200:],
          callbacks=[TrainingSamples(tmp_path, tokenizer, [])])
    assert "## Step" not in (tmp_path / SAMPLES_FILE).read_text()


def test_why_a_run_stopped_reads_as_the_plain_string_everywhere(run, tmp_path):
    """StoppedBy is an enum in the code; summary.json, the log line and the MLflow tag (str())
    keep the plain values they always had."""
    result = run(tmp_path / "train", None)
    assert result.stopped_by is StoppedBy.MAX_STEPS
    assert json.loads(json.dumps(summary_of(result, "data")))["stopped_by"] == "max_steps"
    assert str(result.stopped_by) == f"{result.stopped_by}" == "max_steps"

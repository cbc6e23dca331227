"""Killed training loses nothing: SIGKILL resumes to the same weights and metrics; SIGINT and
SIGTERM write a checkpoint and exit promptly, and the resume continues the same MLflow run. A run
killed during evaluation is not left RUNNING, and a finished run is trained again from step 0."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from tiny_project import tiny_params, wait_for_checkpoint

from tinyllm import workflow
from tinyllm.config import params_from_dict

# Long enough for a signal to land mid-training; a checkpoint soon.
LONG_RUN = {"train.max_steps": 300, "train.checkpoint_interval": 20, "train.eval_interval": 100,
            "model.dropout": 0.1}
SCRIPT = textwrap.dedent("""
    import sys
    from tinyllm import workflow
    from tinyllm.config import params_from_dict
    from tinyllm.errors import exit_on_error
    from tinyllm.logs import setup_logging
    sys.path.insert(0, {tests!r})
    from tiny_project import tiny_params

    def main():
        setup_logging()
        params = params_from_dict(tiny_params({corpus!r}, **{overrides!r}))
        layout = workflow.Layout({root!r})
        workflow.build(params, layout, through=workflow.{through})

    exit_on_error(main)
""")


def start_training(root: Path, corpus: Path, store: str | None = None) -> subprocess.Popen:
    """The tiny params' 300 steps in a new process: with evaluation, or tracked into `store` (an
    MLflow URI) without (registering the model takes seconds)."""
    code = SCRIPT.format(tests=str(Path(__file__).parents[1]), corpus=str(corpus),
                         root=str(root), through="train" if store else "evaluate",
                         overrides={**LONG_RUN, "tracking.enabled": store is not None})
    env = {**os.environ, **({"MLFLOW_TRACKING_URI": store} if store else {})}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def weights(root: Path) -> dict:
    return torch.load(root / "models/model/weights.pt", weights_only=True)


def test_sigkill_then_rerun_resumes_and_ends_with_identical_weights(tmp_path, corpus_dir):
    clean = start_training(tmp_path / "clean", corpus_dir)
    assert clean.wait(timeout=300) == 0, clean.communicate()

    killed = start_training(tmp_path / "killed", corpus_dir)
    checkpoint = tmp_path / "killed/models/checkpoints/last.pt"
    wait_for_checkpoint(killed, checkpoint)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed/models/model").exists()
    trained = torch.load(checkpoint, weights_only=True)["step"]
    assert len(losses(tmp_path / "killed")) >= trained  # the curve so far was already on disk

    resumed = start_training(tmp_path / "killed", corpus_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming from" in err and "at step 0 " not in err
    reference, result = weights(tmp_path / "clean"), weights(tmp_path / "killed")
    assert reference.keys() == result.keys()
    assert all(torch.equal(reference[k], result[k]) for k in reference)
    for name in ("models/eval/metrics.json", "models/train/eval.csv", "models/train/samples.md"):
        assert (tmp_path / "clean" / name).read_text() == (tmp_path / "killed" / name).read_text()
    assert losses(tmp_path / "clean") == losses(tmp_path / "killed")


def losses(root: Path) -> list[tuple]:
    """Per-step train loss, lr and grad norm: everything in steps.csv but the timings."""
    with open(root / "models/train/steps.csv") as handle:
        return [(row["train_loss"], row["lr"], row["grad_norm"]) for row in csv.DictReader(handle)]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_writes_a_checkpoint_and_exits_promptly_with_one_line(
        tmp_path, corpus_dir, new_store, monkeypatch, signum):
    store = new_store(tmp_path / "store")
    process = start_training(tmp_path, corpus_dir, store)
    wait_for_checkpoint(process, tmp_path / "models/checkpoints/last.pt")
    os.kill(process.pid, signum)
    sent = time.monotonic()
    _, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 128 + signum
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: training interrupted by signal {int(signum)} at step ")
    assert "checkpoint written to" in last
    state = torch.load(tmp_path / "models/checkpoints/last.pt", weights_only=True)
    assert f"at step {state['step']};" in last
    [run] = tracked_runs(store)
    assert run.info.status == "KILLED" and state["run_id"] == run.info.run_id
    if signum != signal.SIGINT:
        return
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # `dvc repro` after Ctrl-C, in-process
    params = params_from_dict(tiny_params(str(corpus_dir), **LONG_RUN))  # tracked, as started
    workflow.build(params, workflow.Layout(tmp_path), through=workflow.train)
    assert [r.info.run_id for r in tracked_runs(store)] == [run.info.run_id]  # no KILLED twin
    check_one_whole_run(store, run.info.run_id, steps=300, evaluated_at=[100, 200, 300])


def tracked_runs(store: str) -> list:
    from tinyllm.tracking.store import Store

    opened = Store(store)
    return opened.client.search_runs([opened.experiment_id("tests")])


def check_one_whole_run(store: str, run_id: str, steps: int, evaluated_at: list[int]) -> None:
    """The run FINISHED, each step's curves logged once, and each evaluation's samples (of the
    tiny params' one prompt) once."""
    from tinyllm.tracking.runs import STEP_METRICS, TRAINING_SAMPLES, VAL_LOSS
    from tinyllm.tracking.store import Store

    client = Store(store).client
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run_id, STEP_METRICS["train_loss"])
    assert sorted(m.step for m in history) == list(range(1, steps + 1))
    assert sorted(m.step for m in client.get_metric_history(run_id, VAL_LOSS)) == evaluated_at
    table = json.loads(Path(client.download_artifacts(run_id, TRAINING_SAMPLES)).read_text())
    assert sorted(row[table["columns"].index("step")] for row in table["data"]) == evaluated_at


def test_a_finished_run_trains_again_from_step_0_into_a_run_of_its_own(
        tmp_path, corpus_dir, monkeypatch, new_store):
    """`dvc repro -f` (or outputs lost) after training finished: every step again, from step 0,
    in a new MLflow run whose name says it is the second of these params."""
    from tinyllm.tracking.runs import run_name

    store = new_store(tmp_path)
    monkeypatch.chdir(tmp_path)  # the MLflow store is here
    params = params_from_dict(tiny_params(str(corpus_dir)))
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.train)
    assert not list(layout.checkpoints.iterdir())  # a checkpoint only resumes an interrupted run
    first = json.loads((layout.train_dir / "summary.json").read_text())
    workflow.train(params, layout)
    again = json.loads((layout.train_dir / "summary.json").read_text())
    assert again["resumed_from_step"] == 0 and again["steps"] == first["steps"] == 30
    runs = sorted(tracked_runs(store), key=lambda r: r.info.start_time)
    assert [r.info.run_name for r in runs] == [run_name(params), f"{run_name(params)} #2"]
    assert runs[1].data.tags["tinyllm.tokens_per_sec"] == str(again["tokens_per_sec"])


EVALUATION_KILLED = textwrap.dedent("""
    import sys, time
    from tinyllm import workflow
    from tinyllm.config import params_from_dict
    from tinyllm.tracking.runs import TrackedRun
    sys.path.insert(0, {tests!r})
    from tiny_project import tiny_params

    def stuck(self, values):  # the evaluation's scores are ready; SIGKILL comes now
        print("logging the evaluation", file=sys.stderr, flush=True)
        time.sleep(300)

    TrackedRun.log_metrics = stuck
    workflow.evaluate(params_from_dict(tiny_params({corpus!r})), workflow.Layout("."))
""")


def test_a_run_killed_during_evaluation_ends_with_the_next_evaluation(
        tmp_path, corpus_dir, monkeypatch, new_store):
    store = new_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = params_from_dict(tiny_params(str(corpus_dir)))
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.train)
    code = EVALUATION_KILLED.format(tests=str(Path(__file__).parents[1]), corpus=str(corpus_dir))
    with open(tmp_path / "evaluate.log", "w+") as log:
        process = subprocess.Popen([sys.executable, "-c", code], stderr=log,
                                   env={**os.environ, "MLFLOW_TRACKING_URI": store})
        deadline = time.monotonic() + 120
        while "logging the evaluation" not in (tmp_path / "evaluate.log").read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read()
            time.sleep(0.05)
        [run] = tracked_runs(store)
        assert run.info.status == "RUNNING"  # reopened by the evaluation, which is killed now
        process.kill()
        process.wait(timeout=30)
    workflow.evaluate(params, layout)  # the next command: `dvc repro` runs evaluate again
    [again] = tracked_runs(store)
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert "eval_test_loss" in again.data.metrics

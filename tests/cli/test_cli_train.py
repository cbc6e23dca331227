"""`tinyllm train`: ad-hoc training on any text, tracked and registered under the data's name."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import yaml
from tiny_project import write_params

from tinyllm.tracking.runs import STEP_METRICS
from tinyllm.tracking.store import Store

SMALL = ["--layers", "1", "--heads", "2", "--width", "16"]


def test_trains_registers_under_the_data_name_and_can_be_chatted_with(invoke, tiny_project):
    result = invoke("train", tiny_project, "--max-steps", "12", *SMALL)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "training 'my_text' on data/my_text.txt (from scratch)" in out
    assert "1 layers, 2 heads, width 16, context 16" in out  # options over params.yaml
    assert "12 steps, warm-up 1, batch 8" in out  # batch from params.yaml; warm-up 5 capped
    assert "registered as 'my_text'" in out and "defaults: ./params.yaml" in out
    version = Store().client.get_registered_model("my_text")
    assert version.latest_versions or version.aliases
    assert "registered:    models:/my_text/1" in out
    assert out.rstrip().endswith("chat with it:  tinyllm chat --model-uri models:/my_text/1")
    assert (Path("runs/my_text/models/model") / "weights.pt").is_file()
    chat = invoke("chat", "--model-uri", "models:/my_text/1", "--max-tokens", "5",
                  input="ROMEO:\n")
    assert chat.exit_code == 0 and len(chat.stdout) >= 5


def test_no_register_trains_untracked_into_its_output_directory(invoke, tiny_project):
    first = invoke("train", "data", "--no-register", "--max-steps", "4", *SMALL)
    assert first.exit_code == 0, first.stderr
    assert "training 'data' on data (from scratch)" in first.stdout  # a directory's name
    assert "tracking: off (--no-register" in first.stdout
    assert "chat with it:  tinyllm chat --model-uri runs/data/models/model" in first.stdout
    assert "4 steps, warm-up 0, batch" in first.stdout  # warm-up 5 capped, not refused
    with_store = Store().client
    assert "data" not in {m.name for m in with_store.search_registered_models()}


@contextlib.contextmanager
def ctrl_c_at(step: int):
    """Ctrl-C (SIGINT to this process) once training has logged `step`."""
    from tinyllm.training.progress import ProgressReporter

    report = ProgressReporter.__call__

    def call(self, metrics):
        report(self, metrics)
        if metrics.step == step:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProgressReporter, "__call__", call)
        yield


def test_resume_continues_the_interrupted_mlflow_run_and_a_fresh_start_opens_another(
        invoke, tiny_project):
    args = ["train", tiny_project, "--max-steps", "8", *SMALL]
    with ctrl_c_at(step=4):
        stopped = invoke(*args)
    assert stopped.exit_code == 130
    assert "interrupted by signal 2 at step 5; checkpoint written" in stopped.stderr  # next step
    assert "run the same command with --resume to continue" in stopped.stderr
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert "(resuming)" in resumed.stdout
    summary = json.loads(Path("runs/my_text/models/train/summary.json").read_text())
    assert summary["resumed_from_step"] == 5
    client = Store().client
    experiment = client.get_experiment_by_name("cli-tests").experiment_id
    [run] = client.search_runs([experiment])  # one model, one run: no KILLED twin
    assert run.info.status == "FINISHED" and "eval_test_loss" in run.data.metrics
    steps = client.get_metric_history(run.info.run_id, STEP_METRICS["train_loss"])
    assert sorted(m.step for m in steps) == list(range(1, 9))  # each step once

    with ctrl_c_at(step=4):
        assert invoke(*args).exit_code == 130
    again = invoke(*args)  # without --resume: the checkpoint is set aside, a new run opens
    assert again.exit_code == 0 and "the previous checkpoint was moved to" in again.stderr
    assert len(list(Path("runs/my_text/models/checkpoints").glob("last.set-aside-*.pt"))) == 1
    runs = client.search_runs([experiment], order_by=["attributes.start_time"])
    assert [r.info.status for r in runs] == ["FINISHED", "KILLED", "FINISHED"]
    first = runs[0].info.run_name
    assert [r.info.run_name for r in runs] == [first, f"{first} #2", f"{first} #3"]


def test_evaluate_max_chars_of_params_yaml_caps_what_it_scores(invoke, tiny_project):
    """`tinyllm train` evaluates as the evaluate stage does: ./params.yaml's evaluate.max_chars
    samples a longer split, metrics.json and the done line give the interval, and the scoring
    and sampling show their progress."""
    raw = yaml.safe_load(Path("params.yaml").read_text(encoding="utf-8"))
    raw["evaluate"]["max_chars"] = 96
    write_params(Path("params.yaml"), raw)
    result = invoke("train", tiny_project, "--no-register", "--max-steps", "2", *SMALL)
    assert result.exit_code == 0, result.stderr
    assert re.search(r"^done: test loss [\d.]+ ± [\d.]+ nats/char \(95% CI of a sample\), "
                     r"[\d.]+ bits/char$", result.stdout, re.MULTILINE)
    metrics = json.loads(Path("runs/my_text/models/eval/metrics.json").read_text())
    assert list(metrics) == ["test", "val"] and set(metrics["test"]) == {"loss", "loss_ci95"}
    assert metrics["test"]["loss_ci95"] > 0 and metrics["val"]["loss_ci95"] > 0
    log = result.stderr
    for split in ("val", "test"):
        assert re.search(rf"evaluate: scoring {split}: 96 characters of [\d,]+, evenly spaced "
                         r"\(evaluate.max_chars 96\) in [\d.]+ s", log), log
    assert "evaluate: sampling: 20 characters (1 prompt(s)) in" in log
    assert re.search(r"evaluate: test loss [\d.]+ ± [\d.]+ nats/char \(95% CI of a sample\)",
                     log)


def test_resume_without_a_checkpoint(invoke, error_line, tiny_project):
    line = error_line(invoke("train", tiny_project, "--resume", "--output-dir", "elsewhere"))
    assert "--resume: no checkpoint at elsewhere/models/checkpoints/last.pt" in line


def test_missing_data_names_it_and_lists_text_files(invoke, error_line, tiny_project):
    Path("data/more").mkdir()
    Path("data/more/notes.md").write_text("x")
    line = error_line(invoke("train", "data/typo.txt"))
    assert line == ("error: data file not found: data/typo.txt; text files under ./data/: "
                    "data/more/notes.md, data/my_text.txt")


def test_invalid_settings_name_the_option_and_key(invoke, error_line, tiny_project):
    line = error_line(invoke("train", tiny_project, "--dropout", "2"))
    assert line == "error: --dropout: model.dropout must be <= 0.9, got 2.0"
    line = error_line(invoke("train", tiny_project, "--val-fraction", "0.7"))
    assert "--val-fraction: data.val_fraction must be <= 0.5" in line
    line = error_line(invoke("train", tiny_project, "--heads", "3", "--width", "16"))
    assert "model.d_model (16) must be divisible by model.n_head (3)" in line
    assert "--name" in error_line(invoke("train", tiny_project, "--name", "a/b"))
    line = error_line(invoke("train", tiny_project, "--optimizer", "sgd"))
    assert line.startswith("error: Invalid value for '--optimizer': 'sgd' is not one of 'adamw'")
    assert not Path("runs").exists()


def test_an_unusable_tracking_uri_option_is_named_in_one_line(invoke, error_line, tiny_project):
    """--tracking-uri reaches the steps as an argument (no environment variable): a bad one is
    named before any training."""
    for uri, message in (("http://127.0.0.1:9", "MLflow tracking server http://127.0.0.1:9 is "
                                                "unreachable"),
                         ("bogus://x", "unsupported MLflow tracking URI bogus://x")):
        result = invoke("--tracking-uri", uri, "train", tiny_project, "--max-steps", "4", *SMALL)
        assert result.exit_code == 1
        assert message in error_line(result)
        assert not Path("runs/my_text/models/model").exists()

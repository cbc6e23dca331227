"""Killed training loses nothing: SIGKILL resumes to the same weights and metrics; SIGINT and
SIGTERM write a checkpoint and exit promptly."""

from __future__ import annotations

import csv
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
        params = params_from_dict(tiny_params({corpus!r}, **{{
            "train.max_steps": 300, "train.checkpoint_interval": 20, "train.eval_interval": 100,
            "model.dropout": 0.1, "tracking.enabled": False}}))
        layout = workflow.Layout({root!r})
        workflow.build(params, layout)

    exit_on_error(main)
""")


def start_training(root: Path, corpus: Path) -> subprocess.Popen:
    code = SCRIPT.format(tests=str(Path(__file__).parents[1]),
                         corpus=str(corpus), root=str(root))
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


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
def test_a_stop_signal_writes_a_checkpoint_and_exits_promptly_with_one_line(tmp_path, corpus_dir,
                                                                           signum):
    process = start_training(tmp_path, corpus_dir)
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


def test_a_resume_with_nothing_left_to_train_keeps_the_real_timings(tmp_path, corpus_dir,
                                                                    monkeypatch, new_store):
    """Outputs lost after training finished: the rerun restores the weights and its summary and
    MLflow run report the time the training took, not zeros."""
    import json

    import mlflow

    from tinyllm import workflow
    from tinyllm.config import params_from_dict

    new_store(tmp_path)
    monkeypatch.chdir(tmp_path)  # the MLflow store is here
    params = params_from_dict(tiny_params(str(corpus_dir)))
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.train)
    first = json.loads((layout.train_dir / "summary.json").read_text())
    for lost in ("summary.json", "steps.csv", "eval.csv"):
        (layout.train_dir / lost).unlink()
    workflow.train(params, layout)
    again = json.loads((layout.train_dir / "summary.json").read_text())
    assert again["resumed_from_step"] == again["steps"] == first["steps"]
    assert again["train_seconds"] == pytest.approx(first["train_seconds"], rel=0.5)
    assert again["tokens_per_sec"] == pytest.approx(first["tokens_per_sec"], rel=0.5)
    assert (layout.train_dir / "steps.csv").read_text().count("\n") == first["steps"] + 1
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = json.loads(layout.run_handoff.read_text())["run_id"]
    tags = client.get_run(run_id).data.tags
    assert float(tags["tinyllm.tokens_per_sec"]) == again["tokens_per_sec"] > 0

"""Data-parallel training under torchrun: the weights of one process, resumable under another
world size, one writer, one agreed stop."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_project import (
    ROOT,
    make_project,
    start_stage,
    train_stage,
    wait_for_checkpoint,
    write_corpus,
)

from tinyllm import workflow

ONE = [sys.executable]
TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def package_weights(layout: workflow.Layout) -> dict:
    return torch.load(layout.model / "weights.pt", weights_only=True)


def curves(layout: workflow.Layout) -> dict[str, list[float]]:
    """steps.csv's loss and gradient norm per step (a wrongly scaled loss shows in the norm)."""
    with (layout.train_dir / "steps.csv").open() as f:
        rows = list(csv.DictReader(f))
    return {column: [float(row[column]) for row in rows] for column in ("train_loss", "grad_norm")}


def assert_close(reference: dict, result: dict) -> None:
    assert reference.keys() == result.keys()  # the plain module's names, no DDP "module."
    for name, tensor in reference.items():
        torch.testing.assert_close(result[name], tensor, rtol=0, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus) -> workflow.Layout:
    """The reference: the tiny params trained by a single process."""
    layout = make_project(tmp_path_factory.mktemp("one") / "project", corpus)
    code, output = train_stage(layout, ONE)
    assert code == 0, output
    return layout


def test_two_processes_train_the_weights_of_one_and_only_rank_0_writes(tmp_path, corpus,
                                                                      one_process):
    layout = make_project(tmp_path / "project", corpus)
    code, output = train_stage(layout, TWO)
    assert code == 0, output
    assert_close(package_weights(one_process), package_weights(layout))
    for column, values in curves(one_process).items():
        assert curves(layout)[column] == pytest.approx(values, rel=1e-4), column
    summary = json.loads((layout.train_dir / "summary.json").read_text())
    reference = json.loads((one_process.train_dir / "summary.json").read_text())
    assert summary["best_step"] == reference["best_step"]
    assert summary["best_val_loss"] == pytest.approx(reference["best_val_loss"], abs=1e-5)
    assert summary["tokens_seen"] == reference["tokens_seen"]
    assert output.count("train: 30 of 30 planned steps") == 1  # rank 0's closing line, once
    assert list(layout.checkpoints.iterdir()) == []  # rank 0's checkpoint, removed at the end
    assert len(curves(layout)["train_loss"]) == 30  # one row a step, written once
    assert json.loads(layout.run_handoff.read_text()) == {"run_id": None}


def stop_after_first_checkpoint(layout: workflow.Layout, launcher: list[str]) -> str:
    """Start the train stage, SIGTERM it once its first checkpoint is written; its stderr."""
    process = start_stage(layout, launcher)
    wait_for_checkpoint(process, layout.checkpoints / "last.pt")
    process.send_signal(signal.SIGTERM)  # torchrun passes it on to every rank
    _, err = process.communicate(timeout=60)
    assert process.returncode != 0, err
    return err


def test_sigterm_stops_every_rank_at_one_step_and_the_run_resumes_in_one_process(
        tmp_path, corpus, new_store):
    long_run = {"train.max_steps": 300, "train.checkpoint_interval": 5}
    reference = make_project(tmp_path / "reference", corpus, **long_run)
    assert train_stage(reference, ONE)[0] == 0
    layout = make_project(tmp_path / "project", corpus, **long_run, **{"tracking.enabled": True})
    new_store(layout.root)
    err = stop_after_first_checkpoint(layout, TWO)
    step = torch.load(layout.checkpoints / "last.pt", weights_only=True)["step"]
    # Each rank's error line (their output may interleave): both stopped at the saved step.
    assert err.count("error: training interrupted by signal 15 at step ") == 2, err
    assert err.count(f"interrupted by signal 15 at step {step};") == 2, err
    with sqlite3.connect(layout.root / "mlflow.db") as db:  # rank 0 alone tracked the run
        assert db.execute("SELECT status FROM runs").fetchall() == [("KILLED",)]
    code, output = train_stage(layout, ONE)
    assert code == 0, output
    assert "resuming from" in output and "of 300" in output
    assert_close(package_weights(reference), package_weights(layout))
    with sqlite3.connect(layout.root / "mlflow.db") as db:  # the resume continued that run
        assert db.execute("SELECT status FROM runs").fetchall() == [("FINISHED",)]


def test_batch_size_not_divisible_by_the_world_size_is_one_error_line(tmp_path, corpus):
    layout = make_project(tmp_path / "project", corpus, **{"train.batch_size": 7})
    code, output = train_stage(layout, TWO)
    assert code != 0
    assert ("error: train.batch_size (7) must be divisible by the number of training "
            "processes (2)\n") in output
    assert not layout.checkpoints.exists()


RANK_OWN_PROJECT = """
import os, sys
from tinyllm import workflow
from tinyllm.config import load_params
from tinyllm.errors import exit_on_error

root = sys.argv[1 + int(os.environ["RANK"])]  # rank 0 sees a checkpoint, rank 1 does not
exit_on_error(lambda: workflow.train(load_params(f"{root}/params.yaml"), workflow.Layout(root)))
"""


def test_ranks_that_find_different_checkpoints_stop_with_one_error_line(tmp_path, corpus):
    long_run = {"train.max_steps": 3000, "train.checkpoint_interval": 5}
    stopped = make_project(tmp_path / "stopped", corpus, **long_run)
    stop_after_first_checkpoint(stopped, ONE)
    fresh = make_project(tmp_path / "fresh", corpus, **long_run)
    script = tmp_path / "rank_own_project.py"
    script.write_text(RANK_OWN_PROJECT)
    done = subprocess.run([*TWO, str(script), str(stopped.root), str(fresh.root)],
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("error: the training processes found different checkpoints") == 2

"""A real grid sweep: `dvc exp run --queue -S 'key=x,y'` run by two `dvc queue` workers at once,
with `.venv` not activated, both landing in the project's one sqlite store, then the results in
`dvc exp show` and, grouped by recipe, in `tinyllm runs`."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import statistics
import sys
import time
from pathlib import Path

import pytest
from tiny_project import copy_project, run

VENV_BIN = Path(sys.executable).parent
DVC = str(VENV_BIN / "dvc")  # typed as `.venv/bin/dvc`, the venv not activated


def unactivated(env: dict, repo: Path) -> dict:
    """env without this venv on PATH, as a user's shell is, and the venv as the project's own
    `.venv` (where the stages look for it, pipeline/__init__.py)."""
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    with open(repo / ".git/info/exclude", "a") as exclude:
        exclude.write(".venv\n")
    path = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p) != VENV_BIN)
    assert shutil.which("dvc", path=path) is None  # DVC's own bare `dvc` must find the venv's
    return {**env, "PATH": path}


def wait_for_queue(repo, env, timeout: float = 400) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status = run([DVC, "queue", "status"], repo, env)
        if "Queued" not in status and "Running" not in status:
            return status
        assert time.monotonic() < deadline, status
        time.sleep(2)


def tinyllm(repo, env, *args) -> str:
    """`tinyllm ARGS` with the project's own copy of the library."""
    return run([sys.executable, "-c", "from tinyllm.cli import main; main()", *args], repo, env)


def test_a_sweep_on_two_workers_lands_in_one_store_and_each_result_is_tracked(built_project,
                                                                              tmp_path):
    # The stages both experiments share are built and committed first, as the README advises:
    # two workers writing the same new outputs into DVC's cache at once can collide inside DVC.
    repo = copy_project(built_project.root, tmp_path / "project")
    env = unactivated(built_project.env, repo)
    (repo / "mlflow.db").unlink()  # the workers create the store together
    shutil.rmtree(repo / "mlruns")
    queued = run([DVC, "exp", "run", "--queue", "-S", "train.learning_rate=0.001,0.004"],
                 repo, env)
    assert queued.count("Queued experiment") == 2
    run([DVC, "queue", "start", "-j", "2"], repo, env)
    status = wait_for_queue(repo, env)
    assert status.count("Success") == 2, status
    with sqlite3.connect(repo / "mlflow.db") as db:
        statuses = [s for (s,) in db.execute("SELECT status FROM runs")]
        versions = sorted(v for (v,) in db.execute(
            "SELECT version FROM model_versions WHERE name = 'tiny'"))
        champion = db.execute("SELECT version FROM registered_model_aliases "
                              "WHERE name = 'tiny' AND alias = 'champion'").fetchall()
    assert statuses == ["FINISHED", "FINISHED"]
    assert versions == [1, 2] and len(champion) == 1

    baseline = json.loads(run([DVC, "exp", "show", "--json"], repo, env))[1]
    shown = {}
    names = {}
    for exp in baseline["experiments"]:
        data = exp["revs"][0]["data"]
        lr = data["params"]["params.yaml"]["data"]["train"]["learning_rate"]
        shown[lr] = data["metrics"]["models/eval/metrics.json"]["data"]["test"]["loss"]
        names[lr] = exp["name"]
    assert set(shown) == {0.001, 0.004}
    # The table a person reads, at 120 columns: each experiment's learning rate and test loss
    # (the changed code files' hashes come after them, folded into a `…` column).
    table = run([DVC, "exp", "show", "--no-pager", "--only-changed"], repo,
                {**env, "COLUMNS": "120"})
    assert "test.loss" in table and "train.learning_rate" in table
    for lr, loss in shown.items():
        assert re.search(rf"\[.*\] .* {loss:.5g} .* {lr}\s", table), table
    # An applied experiment is built: `dvc repro` has nothing to redo.
    run([DVC, "exp", "apply", names[0.004]], repo, env)
    assert "Running stage" not in run([DVC, "repro"], repo, env)
    assert json.loads((repo / "models/eval/metrics.json").read_text())["test"]["loss"] == shown[
        0.004]

    # Over seeds (the default), each learning rate is its own recipe of one run.
    by_recipe = json.loads(tinyllm(repo, env, "runs", "--json"))
    assert [(r["recipe"], r["runs"], r["values"]) for r in by_recipe] == sorted(
        [({"train.learning_rate": str(lr)}, 1, ["1337"]) for lr in shown],
        key=lambda r: shown[float(r[0]["train.learning_rate"])])
    for recipe in by_recipe:
        lr = float(recipe["recipe"]["train.learning_rate"])
        assert recipe["test_loss_mean"] == pytest.approx(shown[lr], abs=1e-12)
        assert recipe["test_loss_sd"] is None

    # Over the learning rate, the two runs are repeats of one recipe: mean ± sd of both.
    [pooled] = json.loads(tinyllm(repo, env, "runs", "--over", "train.learning_rate",
                                  "--json"))
    assert pooled["runs"] == 2
    assert pooled["test_loss_mean"] == pytest.approx(statistics.fmean(shown.values()))
    assert pooled["test_loss_sd"] == pytest.approx(statistics.stdev(shown.values()))
    table = tinyllm(repo, env, "runs", "--over", "train.learning_rate")
    assert (f"{pooled['test_loss_mean']:.4f} ± {pooled['test_loss_sd']:.4f}") in table

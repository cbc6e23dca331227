"""Two `dvc queue` workers train at once and both land in the project's one sqlite store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

from tiny_project import make_dvc_project, run


def wait_for_queue(repo, env, seconds: float = 240) -> str:
    """Poll `dvc queue status` until nothing is queued or running; its last output."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], repo, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(2)
    raise AssertionError(f"the queue did not drain in {seconds} s:\n{status}")


def test_two_queue_workers_land_their_runs_and_versions_in_one_sqlite_store(tmp_path):
    repo = tmp_path / "project"
    env = make_dvc_project(repo)
    # The stages both experiments share are built once first, as the README advises: two
    # workers writing the same new outputs into DVC's cache at once can collide inside DVC.
    run(["dvc", "repro", "tokenize"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "data"], repo, env)
    assert not (repo / "mlflow.db").exists()  # the workers still create the store together
    for name, rate in (("fast", "0.005"), ("slow", "0.002")):
        run(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={rate}"],
            repo, env)
    run(["dvc", "queue", "start", "-j", "2"], repo, env)
    status = wait_for_queue(repo, env)
    logs = "\n".join(run(["dvc", "queue", "logs", name], repo, env) for name in ("fast", "slow"))
    assert status.count("Success") == 2, f"{status}\n{logs}"
    assert "database is locked" not in logs

    with sqlite3.connect(repo / "mlflow.db") as db:
        runs = dict(db.execute("SELECT name, status FROM runs"))
        versions = sorted(v for (v,) in db.execute(
            "SELECT version FROM model_versions WHERE name = 'tiny'"))
        champion = db.execute("SELECT version FROM registered_model_aliases "
                              "WHERE name = 'tiny' AND alias = 'champion'").fetchall()
    assert runs == {"fast": "FINISHED", "slow": "FINISHED"}
    assert versions == [1, 2]
    assert len(champion) == 1
    exps = json.loads(run(["dvc", "exp", "show", "--json"], repo, env))
    assert exps  # both experiments are known to DVC too


OPEN_STORE = """
import sys, time
from tinyllm import tracking
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # all start together, imports done
tracking.Store(sys.argv[1])
"""


def test_processes_opening_a_new_sqlite_store_at_the_same_moment_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(start)],
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    failures = [err for p in processes for err in [p.communicate(timeout=120)[1]] if p.returncode]
    assert failures == []
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (1,)  # Default

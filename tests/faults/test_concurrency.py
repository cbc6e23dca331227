"""Processes racing to create the project's sqlite store all get it. (Two `dvc queue` workers
training into one store at once: tests/integration/test_sweep.py.)"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

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

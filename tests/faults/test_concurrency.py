"""Processes racing to create the project's sqlite store all get it. (Two `dvc queue` workers
training into one store at once: tests/integration/test_sweep.py.)"""

from __future__ import annotations

import sqlite3
import subprocess
import sys

PROCESSES = 4
OPEN_STORE = """
import sys, time
from pathlib import Path
import mlflow, mlflow.store.db.utils, mlflow.store.tracking.sqlalchemy_store  # imports done
from tinyllm.tracking.store import Store
uri, ready, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
(ready / sys.argv[4]).touch()
while len(list(ready.iterdir())) < count:  # all processes touch the new store together
    time.sleep(0.001)
Store(uri)
"""


def test_processes_opening_a_new_sqlite_store_at_the_same_moment_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ready = tmp_path / "ready"
    ready.mkdir()
    processes = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri, str(ready),
                                   str(PROCESSES), str(i)], stderr=subprocess.PIPE, text=True)
                 for i in range(PROCESSES)]
    failures = [err for p in processes for err in [p.communicate(timeout=120)[1]] if p.returncode]
    assert failures == []
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (1,)  # Default

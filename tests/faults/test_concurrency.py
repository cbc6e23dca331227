"""Processes racing to create the project's sqlite store all get it. (Two `dvc queue` workers
training into one store at once: tests/integration/test_sweep.py.)"""

from __future__ import annotations

import multiprocessing
import sqlite3

# Imported before the fork, as each racing worker has them by the time it opens the store.
import mlflow.store.db.utils
import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

from tinyllm.tracking.store import Store

PROCESSES = 4
FORK = multiprocessing.get_context("fork")


def open_store(uri: str, start) -> None:
    start.wait()  # all processes touch the new store together
    Store(uri)


def test_processes_opening_a_new_sqlite_store_at_the_same_moment_all_succeed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = FORK.Barrier(PROCESSES)
    # Forked copies of this process, its imports done: the race is the store's creation alone.
    processes = [FORK.Process(target=open_store, args=(uri, start)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [p.exitcode for p in processes] == [0] * PROCESSES
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone() == (1,)  # Default

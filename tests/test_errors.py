"""Which failures become one `error:` line (the user's to fix) and which stay bugs."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from tinyllm.errors import TinyLLMError, user_error_message
from tinyllm.io import exclusive_lock


def test_our_errors_and_mlflow_store_failures_are_one_line_messages():
    assert user_error_message(TinyLLMError("corpus path not found: x")) == (
        "corpus path not found: x")
    database = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))
    assert user_error_message(database).startswith("MLflow failed: (builtins.Exception) disk")
    server = MlflowException("RESOURCE_DOES_NOT_EXIST: no run\n" + "details\n" * 50)
    assert user_error_message(server) == "MLflow failed: RESOURCE_DOES_NOT_EXIST: no run"


@pytest.mark.parametrize("bug", [ValueError("bad"), KeyError("k"), AttributeError("a")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(bug):
    assert user_error_message(bug) is None


def test_a_lock_that_cannot_be_taken_does_not_stop_the_work(tmp_path):
    ran = []
    with exclusive_lock(tmp_path / "missing-directory" / "store.lock"):
        ran.append(True)
    assert ran == [True]

"""Which failures become one `error:` line (the user's to fix) and which stay bugs."""

from __future__ import annotations

import pytest
import sqlalchemy.exc
from mlflow.exceptions import MlflowException

from tinyllm.errors import TinyLLMError, first_line, user_error_message
from tinyllm.io import exclusive_lock


def test_our_errors_and_mlflow_store_failures_are_one_line_messages():
    assert user_error_message(TinyLLMError("corpus path not found: x")) == (
        "corpus path not found: x")
    database = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("disk I/O error"))
    assert user_error_message(database).startswith("MLflow failed: (builtins.Exception) disk")
    server = MlflowException("RESOURCE_DOES_NOT_EXIST: no run\n" + "details\n" * 50)
    assert user_error_message(server) == "MLflow failed: RESOURCE_DOES_NOT_EXIST: no run"


def test_a_message_ending_in_a_colon_takes_its_detail_from_the_lines_below():
    download = MlflowException("The following failures occurred while downloading one or more "
                               "artifacts from file:///gone/mlruns/models/m-1:\n"
                               "##### File MLmodel #####\n"
                               "[Errno 2] No such file or directory: '/gone/MLmodel'")
    assert first_line(download) == (
        "The following failures occurred while downloading one or more artifacts from "
        "file:///gone/mlruns/models/m-1: [Errno 2] No such file or directory: '/gone/MLmodel'")
    assert first_line(OSError("cannot read:\n\n")) == "cannot read: OSError"
    assert first_line(ValueError("")) == "ValueError"


def test_a_long_message_keeps_whole_sentences():
    torch_like = RuntimeError("PytorchStreamReader failed reading zip archive: failed finding "
                              "central directory. This is an internal miniz error. If you are "
                              "seeing this error, there is a high likelihood that your checkpoint "
                              "file is corrupted. This can happen if it was not saved properly.")
    assert first_line(torch_like, limit=120) == (
        "PytorchStreamReader failed reading zip archive: failed finding central directory. "
        "This is an internal miniz error.")
    one_sentence = "x" * 300
    assert first_line(ValueError(one_sentence), limit=100) == one_sentence  # never cut mid-way


@pytest.mark.parametrize("bug", [ValueError("bad"), KeyError("k"), AttributeError("a")])
def test_anything_else_is_a_bug_and_keeps_its_traceback(bug):
    assert user_error_message(bug) is None


def test_a_lock_that_cannot_be_taken_does_not_stop_the_work(tmp_path):
    ran = []
    with exclusive_lock(tmp_path / "missing-directory" / "store.lock"):
        ran.append(True)
    assert ran == [True]

"""A tiny model, trained and registered once per session in a temporary MLflow store.

Every test here runs in its own empty working directory (no params.yaml, no models/) with
MLFLOW_TRACKING_URI pointing at the session's store, so nothing touches the project's files.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_project import copy_store, shared_dir, tiny_params, tiny_work, write_corpus, write_params

from tinyllm import workflow
from tinyllm.cli import cli
from tinyllm.config import params_from_dict

NAME = "tiny"  # the registry name tiny_params gives
PRISTINE = "pristine.db"  # the session's store as built, before any test ran
TINYLLM = str(Path(sys.executable).with_name("tinyllm"))
CLI_PARAMS = {"tracking.experiment": "cli-tests"}


@dataclass
class TinyModel:
    root: Path
    uri: str  # the MLflow tracking URI it is registered in
    package: Path  # the local model package directory
    corpus: Path
    name: str = NAME

    @property
    def command(self) -> str:
        return TINYLLM

    def env(self, **extra) -> dict:
        """Environment for a `tinyllm` subprocess using this store."""
        return {**os.environ, "MLFLOW_TRACKING_URI": self.uri, **extra}


def build_tiny_model(root: Path, store_template: Path) -> None:
    """Train, evaluate and register the tiny model in a new store at root/mlflow.db, and keep a
    copy of that store as built (root/pristine.db)."""
    uri = copy_store(store_template, root)
    params = params_from_dict(tiny_params(str(write_corpus(root / "corpus")), **CLI_PARAMS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.chdir(root)
        workflow.build(params, workflow.Layout(root / "build"))
    shutil.copy(root / "mlflow.db", root / PRISTINE)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, store_template) -> TinyModel:
    """Shared by the session (and its xdist workers): tests read it; what writes to a store gets
    its own (own_store, tiny_project)."""
    root = shared_dir(tmp_path_factory, "cli-model", lambda d: build_tiny_model(d, store_template))
    return TinyModel(root=root, uri=f"sqlite:///{root / 'mlflow.db'}",
                     package=workflow.Layout(root / "build").model, corpus=root / "corpus")


@pytest.fixture
def own_store(tiny_model, tmp_path, monkeypatch) -> str:
    """A copy of the session's store as it was built, for this test alone: its URI, also set as
    MLFLOW_TRACKING_URI. What other tests did to the session's store does not show here."""
    uri = copy_store(tiny_model.root / PRISTINE, tmp_path / "own-store")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(autouse=True)
def cli_env(tiny_model, tmp_path, monkeypatch) -> TinyModel:
    """An empty working directory and the session's store for every test."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_model.uri)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "WARNING")  # tinyllm would set these for good
    return tiny_model


@pytest.fixture(autouse=True)
def keep_logging():
    """`tinyllm` configures the root logger for its own run; undo that after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def invoke():
    """Run `tinyllm ARGS...` in-process; stdout and stderr come back separately."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)
    return run


def _error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    return lines[-1]


@pytest.fixture
def error_line():
    """Checks a failed command printed one `error: ...` line and no traceback; returns it."""
    return _error_line


@pytest.fixture
def tiny_project(cli_env, new_store, tmp_path, monkeypatch) -> Path:
    """The working directory as a tiny project: params.yaml and data/my_text.txt, with a new
    empty store of its own as MLFLOW_TRACKING_URI (what it trains is registered there)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path / "store"))
    raw = tiny_params("unused", **CLI_PARAMS)
    del raw["data"]["corpus"]
    write_params(Path("params.yaml"), raw)
    data = Path("data/my_text.txt")
    data.parent.mkdir()
    data.write_text("\n".join(tiny_work(i, lines=60) for i in range(3)), encoding="utf-8")
    return data

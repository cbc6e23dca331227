"""A tiny model, trained and registered once per session in a temporary MLflow store.

Every test here runs in its own empty working directory (no params.yaml, no models/) with
MLFLOW_TRACKING_URI pointing at the session's store, so nothing touches the project's files.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_project import tiny_params, tiny_work, write_corpus, write_params

from tinyllm import workflow
from tinyllm.cli import cli
from tinyllm.config import params_from_dict

NAME = "tiny"  # the registry name tiny_params gives
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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> TinyModel:
    root = tmp_path_factory.mktemp("cli-store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    corpus = write_corpus(root / "corpus")
    layout = workflow.Layout(root / "build")
    params = params_from_dict(tiny_params(str(corpus), **CLI_PARAMS))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        patch.chdir(root)
        workflow.prepare(params, layout)
        workflow.tokenize(params, layout)
        workflow.train(params, layout)
        workflow.evaluate(params, layout)
    return TinyModel(root=root, uri=uri, package=layout.model, corpus=corpus)


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
def tiny_project(cli_env) -> Path:
    """The working directory as a tiny project: params.yaml and data/my_text.txt."""
    raw = tiny_params("unused", **CLI_PARAMS)
    del raw["data"]["corpus"]
    write_params(Path("params.yaml"), raw)
    data = Path("data/my_text.txt")
    data.parent.mkdir()
    data.write_text("\n".join(tiny_work(i, lines=60) for i in range(3)), encoding="utf-8")
    return data

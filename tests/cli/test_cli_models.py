"""`tinyllm models`: the registry as a table, and the empty or missing store."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tinyllm.package import load_package
from tinyllm.tracking.store import Store

pytestmark = pytest.mark.usefixtures("own_store")  # the registry as built: one model


def test_table_lists_versions_with_their_facts(invoke, tiny_model):
    result = invoke("models")
    assert result.exit_code == 0, result.stderr
    version = Store(tiny_model.uri).client.get_model_version("tiny", "1")
    row = next(line for line in result.stdout.splitlines() if " tiny " in line)
    assert "champion" in row
    assert f"{float(version.tags['test_bits_per_char']):.3f}" in row
    assert version.run_id in row
    assert f" {load_package(tiny_model.package).model.num_parameters():,} " in row
    for column in ("name", "version", "aliases", "test bits/char", "parameters", "created",
                   "run id"):
        assert column in result.stdout


def test_one_model_by_name(invoke):
    result = invoke("models", "tiny")
    assert result.exit_code == 0
    assert " tiny " in result.stdout


def test_unknown_name_lists_what_exists(invoke, error_line):
    line = error_line(invoke("models", "nope"))
    assert line.startswith("error: no registered model named 'nope'")
    assert "tiny" in line.split("registered models: ")[1].split(", ")


def test_no_store_yet_says_so_without_creating_one(invoke, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    result = invoke("models")
    assert result.exit_code == 0
    assert "No models registered: no MLflow store at sqlite:///" in result.stdout
    assert "dvc repro" in result.stdout
    assert not Path("mlflow.db").exists()


def test_empty_store_says_so(invoke, tiny_model, tmp_path, own_store):
    empty = tmp_path / "empty.db"
    shutil.copy(own_store.removeprefix("sqlite:///"), empty)
    Store(f"sqlite:///{empty}").client.delete_registered_model("tiny")
    result = invoke("--tracking-uri", f"sqlite:///{empty}", "models")
    assert result.exit_code == 0
    assert "No models registered in sqlite:///" in result.stdout
    assert "dvc repro" in result.stdout
    assert Store(tiny_model.uri).client.get_registered_model("tiny")  # untouched


def test_unreachable_server_is_named(invoke, error_line):
    result = invoke("--tracking-uri", "http://127.0.0.1:9", "models")
    assert "MLflow tracking server http://127.0.0.1:9 is unreachable" in error_line(result)


def test_restore_writes_the_registered_package_back_and_never_over_a_model(
        invoke, error_line, tiny_model):
    Path("params.yaml").write_text("tracking:\n  registry_name: tiny\nmodel:\n  n_head: 0\n")
    result = invoke("restore")  # the refused n_head left in params.yaml does not matter
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("restored models:/tiny/latest (version 1) to ")
    for file in tiny_model.package.iterdir():
        assert (Path("models/model") / file.name).read_bytes() == file.read_bytes(), file.name
    handoff = Path("models/train/mlflow_run.json").read_text()
    assert Store(tiny_model.uri).client.get_model_version("tiny", "1").run_id in handoff
    assert error_line(invoke("restore", "models:/tiny/1")) == (
        f"error: {Path.cwd() / 'models/model'} exists; move it aside to restore another model")

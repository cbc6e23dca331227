"""A server of a registered model serves its other versions and aliases too, as a request's
`model` names them (the playground sets two side by side): each loaded when first asked, at
most MAX_OTHERS kept, an unknown one a 404 naming `model`, one that cannot load a 503 naming it;
/v1/models lists them with the run that trained each and its page in mlflow ui, and the
catalog follows the registry. In-process: the app over Starlette's TestClient with the server's
own Registry on a real MLflow store (across processes: tests/cli/test_cli_serve.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tiny_project import copy_store, register_packages, untrained_package

from tinyllm.package import load_package
from tinyllm.serving.app import create_app
from tinyllm.serving.catalog import Registry
from tinyllm.serving.limits import Limits
from tinyllm.serving.served import MAX_OTHERS, ServedModel
from tinyllm.tracking import discovery
from tinyllm.tracking.store import Store

NAME = "tiny"


@dataclass
class Served:
    http: TestClient
    model: ServedModel
    registry: Registry
    store: Store
    packages: list[Path]  # version i + 1's
    runs: list[str]  # the run that registered version i + 1


@pytest.fixture(scope="module")
def served(tmp_path_factory, store_template):
    """models:/tiny@champion served, the champion version 2 of four."""
    directory = tmp_path_factory.mktemp("versions")
    uri = copy_store(store_template, directory)
    packages = [untrained_package(directory / f"v{i}", seed=i) for i in range(1, 5)]
    runs = register_packages(uri, NAME, packages)
    store = Store(uri)
    store.client.set_registered_model_alias(NAME, "champion", "2")
    registry = Registry(discovery.resolve(f"models:/{NAME}@champion", uri), uri)
    model = ServedModel(registry.served, catalog=registry.catalog, resolve=registry.resolve)
    with TestClient(create_app(model, Limits())) as http:
        yield Served(http, model, registry, store, packages, runs)
    model.stop()


def complete(served: Served, model: str) -> dict:
    reply = served.http.post("/v1/completions", json={"model": model, "prompt": "ROMEO:",
                                                      "max_tokens": 12, "seed": 3})
    return reply.json() | {"status": reply.status_code}


def test_models_lists_the_one_served_then_each_alias_and_version_with_its_runs_page(served):
    data = served.http.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == [NAME, "tiny@champion", "tiny/latest", "tiny/4", "tiny/3",
                                       "tiny/2", "tiny/1"]
    first = data[0]
    assert (first["version"], first["served_as"], first["aliases"], first["run_id"]) == (
        "models:/tiny/2", "models:/tiny@champion", ["champion"], served.runs[1])
    experiment = served.store.client.get_run(served.runs[1]).info.experiment_id
    assert first["run_page"] == (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/"
                                 f"{served.runs[1]}?workflowType=machine_learning")
    assert first["run_page_note"] == "after `mlflow ui` in the project root"
    assert served.http.get("/v1/models/tiny/latest").json()["version"] == "models:/tiny/4"
    assert served.http.get("/v1/models/models:/tiny/3").json()["id"] == "tiny/3"
    missing = served.http.get("/v1/models/tiny/9")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_a_request_gets_the_version_it_names_and_a_worker_keeps_few(served):
    for model, version in [("tiny/1", 1), ("models:/tiny/3", 3), ("tiny/latest", 4),
                           ("tiny@champion", 2), (NAME, 2)]:
        reply = complete(served, model)
        assert reply["model"] == f"models:/tiny/{version}", reply
        expected = load_package(served.packages[version - 1]).generate(
            "ROMEO:", seed=3, max_tokens=12)
        assert reply["choices"][0]["text"] == expected
    assert list(served.model.others) == ["3", "4"] and MAX_OTHERS == 2  # 1 was dropped first
    unknown = complete(served, "tiny/9")
    assert unknown["status"] == 404 and unknown["error"]["param"] == "model"
    assert "GET /v1/models lists" in unknown["error"]["message"]


def test_the_catalog_follows_the_registry_and_a_version_that_cannot_load_is_a_503(served,
                                                                                  tmp_path):
    newest = untrained_package(tmp_path, seed=5)
    register_packages(served.store.uri, NAME, [newest, tmp_path / "gone"])
    served.model.catalog = served.registry.refresh()  # what the server's process sends
    document = served.http.get("/openapi.json").json()
    assert "tiny/6" in document["components"]["schemas"]["CompletionRequest"]["properties"][
        "model"]["enum"]
    gone = complete(served, "tiny/6")
    assert gone["status"] == 503 and gone["error"]["param"] == "model", gone
    assert gone["error"]["type"] == "server_error" and "models:/tiny/6" in gone["error"]["message"]

    served.store.client.set_registered_model_alias(NAME, "champion", "5")
    try:
        served.model.catalog = served.registry.refresh()
        served.model.swap(served.registry.moved())
        assert complete(served, NAME)["model"] == "models:/tiny/5"
        assert served.http.get("/v1/models").json()["data"][0]["aliases"] == ["champion"]
    finally:
        served.store.client.set_registered_model_alias(NAME, "champion", "2")
        served.model.catalog = served.registry.refresh()
        served.model.swap(served.registry.moved())

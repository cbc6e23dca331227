"""`tinyllm serve` with the registry: it finds the champion as chat does, follows the alias, and
serves another version a request names (its worker asks the server's process for it)."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import torch
import yaml
from test_serve import worker_processes

from tinyllm.package import load_package, save_package
from tinyllm.serving import launch
from tinyllm.tracking.runs import TrackedRun
from tinyllm.tracking.store import Store


def register(store: Store, package: Path, test_loss: float) -> str:
    with TrackedRun.start(store, "serve-tests", "served", {}, {}) as run:
        return run.register(package, "served", test_loss, test_loss, "data").version


def complete(url: str, seed: int, model: str = "served") -> dict:
    body = json.dumps({"model": model, "prompt": "ROMEO:", "max_tokens": 20, "seed": seed})
    request = urllib.request.Request(f"{url}/v1/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_serve_takes_the_champion_and_follows_the_alias_without_a_restart(tiny_model, tmp_path,
                                                                          monkeypatch, new_store):
    uri = new_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    store = Store(uri)
    assert register(store, tiny_model.package, 2.0) == "1"
    Path("params.yaml").write_text(yaml.safe_dump({"tracking": {"registry_name": "served"}}))
    log = tmp_path / "serve.log"
    server, url = launch.start([tiny_model.command, "serve", "--refresh-seconds", "0.2"],
                                       log)
    try:
        launch.wait_until_up(f"{url}/health", server, log)
        assert complete(url, seed=4)["model"] == "models:/served/1"
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as reply:
            served = json.loads(reply.read())["data"][0]  # what the playground shows
        assert served["served_as"] == "models:/served@champion"
        assert served["run_id"] == store.client.get_model_version("served", "1").run_id

        loaded = load_package(tiny_model.package)
        with torch.no_grad():
            for p in loaded.model.parameters():
                p.add_(0.05)
        better = save_package(tmp_path / "better", loaded.model, loaded.tokenizer, {})
        assert register(store, better, 1.0) == "2"  # the champion alias moves to it
        deadline = time.monotonic() + 20
        while (reply := complete(url, seed=4))["model"] != "models:/served/2":
            assert time.monotonic() < deadline, "the server kept the old version"
            time.sleep(0.1)
        expected = load_package(better).generate("ROMEO:", max_tokens=20, seed=4)
        assert reply["choices"][0]["text"] == expected
        older = complete(url, seed=4, model="served/1")  # side by side with the champion
        assert older["model"] == "models:/served/1"
        assert older["choices"][0]["text"] == load_package(tiny_model.package).generate(
            "ROMEO:", max_tokens=20, seed=4)
        workers = worker_processes(server.pid)
    finally:
        server.kill()  # outright: its workers must notice by themselves
        server.wait()
    assert "using models:/served@champion" in log.read_text()
    deadline = time.monotonic() + 30  # killed outright, the server cannot stop its workers:
    while [p for p in workers if Path(f"/proc/{p}").exists()]:  # they notice it is gone
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)

"""`tinyllm serve` with the registry: it finds the champion as chat does, and follows the alias."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import torch
import yaml
from test_serve import free_port, worker_processes

from tinyllm import tracking
from tinyllm.package import load_package, save_package
from tinyllm.tracked_run import TrackedRun


def register(store: tracking.Store, package: Path, test_loss: float) -> str:
    with TrackedRun.start(store, "serve-tests", "served", {}, {}) as run:
        return run.register(package, "served", test_loss, test_loss, "data").version


def complete(url: str, seed: int) -> dict:
    body = json.dumps({"model": "served", "prompt": "ROMEO:", "max_tokens": 20, "seed": seed})
    request = urllib.request.Request(f"{url}/v1/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read())


def test_serve_takes_the_champion_and_follows_the_alias_without_a_restart(tiny_model, tmp_path,
                                                                          monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    store = tracking.Store(uri)
    assert register(store, tiny_model.package, 2.0) == "1"
    Path("params.yaml").write_text(yaml.safe_dump({"tracking": {"registry_name": "served"}}))
    port = free_port()
    server = subprocess.Popen([tiny_model.command, "serve", "--port", str(port),
                               "--refresh-seconds", "0.2"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded machine imports torch slowly
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline
            try:
                first = complete(url, seed=4)
                break
            except OSError:
                time.sleep(0.1)
        assert first["model"] == "models:/served/1"

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
        workers = worker_processes(server.pid)
    finally:
        server.kill()
        output = server.communicate()[0]
    assert "using models:/served@champion" in output
    deadline = time.monotonic() + 30  # killed outright, the server cannot stop its workers:
    while [p for p in workers if Path(f"/proc/{p}").exists()]:  # they notice it is gone
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.1)

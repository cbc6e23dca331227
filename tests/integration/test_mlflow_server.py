"""Through a real `mlflow server` (REST): log, register, resolve; then serve a registered model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tiny_project import ROOT

from tinyllm import tracking, workflow

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {seconds} s")


def start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.fixture
def server(tmp_path, monkeypatch):
    port = free_port()
    process = start([str(BIN / "mlflow"), "server", "--backend-store-uri",
                     f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
                     str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                     "--workers", "1"], dict(os.environ), tmp_path / "server.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{uri}/health", process)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_log_register_resolve_and_serve_through_a_tracking_server(tmp_path, make_params,
                                                                  server):
    params = make_params()
    layout = workflow.Layout(tmp_path / "project")
    for step in (workflow.prepare, workflow.tokenize, workflow.train, workflow.evaluate):
        step(params, layout)
    store = tracking.Store()
    assert store.uri == server
    assert str(store.client.get_model_version_by_alias("tiny", "champion").version) == "1"
    loaded, resolved = tracking.load_model_uri("models:/tiny/1", store=store)
    assert resolved.version == "1"
    expected = loaded.generate("ROMEO:", max_new_tokens=10, temperature=0)
    assert not (tmp_path / "project/mlruns").exists()  # artifacts went through the server

    port = free_port()
    serving = start([str(BIN / "mlflow"), "models", "serve", "-m", "models:/tiny/1",
                     "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                    {**os.environ, "MLFLOW_TRACKING_URI": server,
                     "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},  # serving runs uvicorn
                    tmp_path / "serve.log")
    try:
        wait_for(f"http://127.0.0.1:{port}/ping", serving)
        body = json.dumps({"inputs": ["ROMEO:", "JULIET:"],
                           "params": {"max_tokens": 10, "temperature": 0.0}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = json.loads(reply.read())["predictions"]
        load = subprocess.run([sys.executable, str(ROOT / "scripts/serve_load.py"), "--url",
                               f"http://127.0.0.1:{port}", "--clients", "8", "--requests", "200",
                               "--max-tokens", "5"], capture_output=True, text=True, timeout=300)
    finally:
        serving.terminate()
        serving.wait(timeout=30)
    assert len(predictions) == 2
    assert predictions[0] == expected
    assert load.returncode == 0, load.stderr
    report = json.loads(load.stdout)
    assert (report["requests"], report["clients"], report["errors"]) == (200, 8, 0)

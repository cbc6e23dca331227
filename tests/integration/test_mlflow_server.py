"""Through a real `mlflow server` (REST): log, register, resolve; then serve a registered model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tiny_project import ROOT

import tinyllm
from tinyllm import workflow
from tinyllm.serving import launch
from tinyllm.tracking.store import Store

BIN = Path(sys.executable).parent
# The load-test script's server helpers, so the test starts and stops servers the same way.
_spec = importlib.util.spec_from_file_location("serve_load", ROOT / "scripts/serve_load.py")
serve_load = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_load)


@pytest.fixture
def server(tmp_path, monkeypatch, new_store):
    backend = new_store(tmp_path)  # the server would otherwise create and migrate it
    process, uri = launch.start(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--workers", "1"], tmp_path / "server.log",
        # no job runner: seven more processes importing MLflow, for jobs tinyllm never queues
        {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        launch.wait_until_up(f"{uri}/health", process, tmp_path / "server.log")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri
    finally:
        launch.stop(process)


def invocation(url: str, prompts: list[str], params: dict) -> tuple[int, str]:
    """(HTTP status, the error message or the first prediction) of an /invocations request."""
    body = json.dumps({"inputs": prompts, "params": params}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())["predictions"][0]
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())["message"].splitlines()[-1]
    except OSError as exc:  # the server went away
        return 0, str(exc)


def test_log_register_resolve_and_serve_through_a_tracking_server(tmp_path, make_params,
                                                                  server):
    params = make_params()
    layout = workflow.Layout(tmp_path / "project")
    workflow.build(params, layout)
    store = Store()
    assert store.uri == server
    assert str(store.client.get_model_version_by_alias("tiny", "champion").version) == "1"
    loaded = tinyllm.load_model("models:/tiny/1")
    assert loaded.source.version == "1"
    expected = loaded.generate("ROMEO:", max_tokens=10, temperature=0)
    assert not (tmp_path / "project/mlruns").exists()  # artifacts went through the server

    serving, url = serve_load.start_server("models:/tiny/1", 1, tmp_path / "serve.log")
    try:
        launch.wait_until_up(f"{url}/ping", serving, tmp_path / "serve.log")
        body = json.dumps({"inputs": ["ROMEO:", "JULIET:"],
                           "params": {"max_tokens": 10, "temperature": 0.0}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            predictions = json.loads(reply.read())["predictions"]
        load = subprocess.run([sys.executable, str(ROOT / "scripts/serve_load.py"), "--url", url,
                               "--clients", "8", "--requests", "200", "--max-tokens", "5",
                               "--server", "mlflow"],
                              capture_output=True, text=True, timeout=300)
        too_many = invocation(url, ["ROMEO:"], {"max_tokens": 100000})  # the CLI's maximum
    finally:  # SIGTERM with generation in flight: tests/cli/test_mlflow_serve.py
        launch.stop(serving)
    assert too_many[0] == 400
    assert too_many[1].endswith("max_tokens must be <= 2000 when served, got 100000")
    assert len(predictions) == 2
    assert predictions[0] == expected
    assert load.returncode == 0, load.stderr
    [run] = json.loads(load.stdout)["runs"]
    assert (run["requests"], run["clients"], run["errors"]) == (200, 8, 0)


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--settle", "-1", "error: --settle must be between 0 and 600 seconds, got -1.0"),
    ("--settle", "nan", "error: --settle must be between 0 and 600 seconds, got nan"),
    ("--settle", "1e300", "error: --settle must be between 0 and 600 seconds, got 1e+300"),
    ("--clients", "0", "error: --clients, --requests, --max-tokens and --workers must be >= 1"),
])
def test_the_load_script_refuses_a_bad_option_in_one_line(option, value, message):
    result = subprocess.run([sys.executable, str(ROOT / "scripts/serve_load.py"), "--url",
                             "http://127.0.0.1:9", option, value], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [message]

"""`mlflow models serve` as the `make run` banner prints it: it starts without an activated venv,
and SIGTERM with a long request in flight stops generation and the whole server at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from test_serve import free_port
from tiny_project import ROOT

from tinyllm.serving import launch
from tinyllm.tracking.runs import TrackedRun
from tinyllm.tracking.store import Store

BIN = Path(sys.executable).parent


def banner_command(model_uri: str, port: int) -> str:
    """The serving line `make run` prints, as a user would type it after it, for this model."""
    line = next((line for line in (ROOT / "Makefile").read_text().splitlines()
                 if "Serve it with MLflow: " in line), None)
    assert line, "the Makefile's `make run` banner prints no `Serve it with MLflow:` line"
    command = line.split("Serve it with MLflow: ", 1)[1].rstrip("'")
    command = command.replace("$(CURDIR)/$(BIN)", str(BIN)).replace("$$", "$")
    assert "models:/shakespeare/1" in command and "-p 5001" in command, command
    return command.replace("models:/shakespeare/1", model_uri).replace("-p 5001", f"-p {port}")


def session_processes(server: subprocess.Popen) -> dict[int, str]:
    """pid -> state ('Z' for a zombie) of every process left in the server's session, from
    /proc, once the server (the mlflow command, our child) is reaped if it has exited."""
    server.poll()
    session, found = server.pid, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it ended meanwhile
            continue
        if int(fields[3]) == session:
            found[int(stat.parent.name)] = fields[0]
    return found


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def invoke(url: str, reply: dict) -> None:
    """A request for 20 x 2000 characters: far longer than the test waits (until the cap)."""
    body = json.dumps({"inputs": ["ROMEO:"] * 20, "params": {"max_tokens": 2000}}).encode()
    request = urllib.request.Request(f"{url}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            reply.update(status=answer.status, text=answer.read().decode())
    except urllib.error.HTTPError as exc:
        reply.update(status=exc.code, text=exc.read().decode())
    except OSError as exc:  # the connection closed
        reply.update(status=None, text=str(exc))


def test_the_banner_command_serves_and_sigterm_stops_generation_and_the_server(
        tiny_model, tmp_path, new_store):
    uri = new_store(tmp_path)
    with TrackedRun.start(Store(uri), "serve-tests", "served", {}, {}) as run:
        run.register(tiny_model.package, "served", 2.0, 2.0, "data")
    port = free_port()
    # As typed in a fresh shell: the venv is not on PATH (mlflow execs uvicorn from PATH).
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if Path(p).resolve() != BIN.resolve())
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": uri}
    with (tmp_path / "serve.log").open("w") as log:
        server = subprocess.Popen(["bash", "-c", banner_command("models:/served/1", port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    url, reply = f"http://127.0.0.1:{port}", {}
    try:
        launch.wait_until_up(f"{url}/ping", server, tmp_path / "serve.log")
        short = {"inputs": ["ROMEO:"], "params": {"max_tokens": 40}}
        unseeded = [post(url, short) for _ in range(2)]
        assert unseeded[0][0] == 200 and unseeded[0] != unseeded[1]  # a fresh seed each
        tiny = post(url, {**short, "params": {"max_tokens": 5, "temperature": 1e-45}})
        assert tiny[0] == 200, tiny
        status, text = post(url, {**short, "params": {"temperature": -1}})
        assert status == 400 and "temperature must be >= 0.0, got -1.0" in text
        assert "stack_trace" not in text and "Traceback" not in text
        busy = threading.Thread(target=invoke, args=(url, reply))
        busy.start()
        time.sleep(1)  # generation is under way
        os.killpg(server.pid, signal.SIGTERM)
        stopped = time.monotonic()
        while any(state != "Z" for state in session_processes(server).values()):
            assert time.monotonic() - stopped < 5, session_processes(server)
            time.sleep(0.05)
        exited_after = time.monotonic() - stopped
        busy.join(timeout=30)
        # uvicorn's parent (the mlflow command) dies at SIGTERM without waiting for it, so
        # uvicorn, once exited, is reaped by init (PID 1, or a subreaper): none may stay a zombie.
        while session_processes(server):
            assert time.monotonic() - stopped < 10, f"unreaped: {session_processes(server)}"
            time.sleep(0.05)
    finally:
        if session_processes(server):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    log_text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in log_text, log_text[-3000:]
    assert exited_after < 5
    assert reply["status"] == 503, reply
    assert "the server is shutting down; send the request again" in reply["text"]

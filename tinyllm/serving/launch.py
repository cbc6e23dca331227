"""A server as a child process: start it on a free port, wait until it answers, stop it.

One definition for scripts/serve_load.py and the tests, which start `tinyllm serve` and
`mlflow server` / `mlflow models serve` this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path


class ServerNotUp(RuntimeError):
    """The server died, or never answered its probe URL."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(command: list[str], log_path: Path,
          env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`COMMAND --port P` (P a free port) in its own session, its output in log_path; the process
    and its URL. Its own session lets stop() end its workers too."""
    port = free_port()
    with Path(log_path).open("w") as log:  # the server keeps its own copy of the handle
        server = subprocess.Popen([*command, "--port", str(port)], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def wait_until_up(probe_url: str, server: subprocess.Popen | None = None,
                  log_path: Path | None = None, seconds: float = 180) -> float:
    """Seconds until probe_url (e.g. .../health) answers; ServerNotUp if the server exits first
    (with the end of its log) or the time runs out. A loaded machine imports torch slowly."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if server is not None and server.poll() is not None:
            tail = Path(log_path).read_text()[-3000:] if log_path else ""
            raise ServerNotUp(f"the server exited with {server.returncode}; {log_path}:\n{tail}")
        try:
            with urllib.request.urlopen(probe_url, timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise ServerNotUp(f"{probe_url} did not answer in {seconds:.0f} s")


def stop(server: subprocess.Popen, seconds: float = 30) -> None:
    """SIGTERM the server's whole session (its workers too); SIGKILL what lingers."""
    for sig, wait in ((signal.SIGTERM, seconds), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the whole session has already gone
            break
        try:
            server.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue

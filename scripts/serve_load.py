"""Load-test `mlflow models serve`: N requests from C concurrent clients, every reply checked.

    python scripts/serve_load.py                              # models:/shakespeare/1, 200 x 8
    python scripts/serve_load.py --model-uri models:/shakespeare@champion --workers 2
    python scripts/serve_load.py --url http://127.0.0.1:5001  # a server that is already up

Starts the server itself unless --url is given (in the project's MLflow store, or the one
MLFLOW_TRACKING_URI names), waits for /ping, then posts one prompt per request with a different
seed. A request counts as an error unless it answers HTTP 200 with one non-empty string. Prints a
table and one JSON line; exits 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_uri: str, workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    from tinyllm.tracking import tracking_uri

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # the server execs uvicorn
    with log_path.open("w") as log:  # the server keeps its own copy of the handle
        server = subprocess.Popen(
            [str(BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local",
             "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM the server's whole session (uvicorn workers too); SIGKILL what lingers."""
    for sig, seconds in ((signal.SIGTERM, 30), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:  # the whole session has already gone
            break
        try:
            server.wait(timeout=seconds)
            break
        except subprocess.TimeoutExpired:
            continue


class ServerNotUp(RuntimeError):
    """The server died, or never answered its health URL."""


def wait_until_up(probe_url: str, server: subprocess.Popen | None, log_path: Path | None,
                  seconds: float = 120) -> float:
    """Seconds until probe_url (e.g. .../ping) answers; ServerNotUp if the server dies first."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if server is not None and server.poll() is not None:
            raise ServerNotUp(f"the server exited with {server.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(probe_url, timeout=2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.25)
    raise ServerNotUp(f"{probe_url} did not answer in {seconds:.0f} s")


def one_request(url: str, prompt: str, max_tokens: int, seed: int) -> tuple[float, str | None]:
    """(latency in seconds, None if the reply was good else what was wrong)."""
    body = json.dumps({"inputs": [prompt], "params": {"max_tokens": max_tokens,
                                                      "temperature": 0.8, "seed": seed}})
    request = urllib.request.Request(f"{url}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            predictions = json.loads(reply.read())["predictions"]
        problem = None
        if not (len(predictions) == 1 and isinstance(predictions[0], str) and predictions[0]):
            problem = f"unexpected predictions {predictions!r:.80}"
    except (OSError, ValueError, KeyError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - started, problem


def fire(url: str, clients: int, requests: int, max_tokens: int, prompt: str) -> dict:
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda i: one_request(url, prompt, max_tokens, seed=i),
                                range(requests)))
        wall = time.perf_counter() - started
    latencies = sorted(latency for latency, _ in results)
    errors = [problem for _, problem in results if problem]
    return {"requests": requests, "clients": clients, "max_tokens": max_tokens,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": round(wall, 3), "requests_per_s": round(requests / wall, 2),
            "generated_chars_per_s": round(requests * max_tokens / wall, 1),
            "latency_ms": {"p50": round(1000 * statistics.median(latencies), 1),
                           "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
                           "max": round(1000 * latencies[-1], 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="models:/shakespeare/1")
    parser.add_argument("--url", help="an already running server; no server is started")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=50)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    args = parser.parse_args()
    if min(args.clients, args.requests, args.max_tokens, args.workers) < 1:
        sys.exit("error: --clients, --requests, --max-tokens and --workers must be >= 1")

    server = log_path = None
    url = args.url
    if url is None:
        log_path = Path(tempfile.gettempdir()) / f"serve_load.{os.getpid()}.log"
        server, url = start_server(args.model_uri, args.workers, log_path)
    try:
        startup = wait_until_up(f"{url}/ping", server, log_path)
        report = {"model_uri": None if args.url else args.model_uri, "url": url,
                  "workers": None if args.url else args.workers,
                  "startup_s": None if args.url else round(startup, 2),
                  **fire(url, args.clients, args.requests, args.max_tokens, args.prompt)}
    except ServerNotUp as exc:
        sys.exit(f"error: {exc}")
    finally:
        if server is not None:
            stop_server(server)
    if log_path is not None:
        log_path.unlink()  # kept only when the server failed, for the error message to name
    latency = report["latency_ms"]
    print(f"{report['requests']} requests from {report['clients']} clients, "
          f"{report['max_tokens']} new characters each, against {url}\n"
          f"  errors         {report['errors']}\n"
          f"  wall           {report['wall_s']} s ({report['requests_per_s']} requests/s, "
          f"{report['generated_chars_per_s']} generated chars/s)\n"
          f"  latency        p50 {latency['p50']} ms, p95 {latency['p95']} ms, "
          f"max {latency['max']} ms", file=sys.stderr)
    print(json.dumps(report))
    if report["errors"]:
        sys.exit(f"error: {report['errors']} of {report['requests']} requests failed; "
                 f"first: {report['first_error']}")


if __name__ == "__main__":
    main()

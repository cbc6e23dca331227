"""The memory a `tinyllm serve` worker keeps after a slow reader of a large streamed reply leaves.

    python scripts/serve_slow_reader.py --model-uri models:/shakespeare/1
    python scripts/serve_slow_reader.py --random-model --n 16 --max-tokens 2000 --logprobs 20

Starts `tinyllm serve --workers 1` and reads its worker's resident memory (RSS) when idle. Then,
for each of a fast reader and a slow one (a small receive buffer, --chunk bytes read every
--pause seconds, gone after --seconds), streams the same large reply (--n choices of
--max-tokens characters with --logprobs alternatives each), waits until the worker has no
sequence in flight, and reads the RSS again, at once and after --after seconds. Prints one JSON
line; the RSS is the worker's (psutil), in MB.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from serve_load import random_package

from tinyllm.serving import launch


def worker_of(server_pid: int) -> psutil.Process:
    """The worker process (the server's spawned child that serves, not multiprocessing's
    resource tracker)."""
    children = [p for p in psutil.Process(server_pid).children(recursive=True)
                if "resource_tracker" not in " ".join(p.cmdline())]
    if len(children) != 1:
        sys.exit(f"error: expected one worker process, found {len(children)}")
    return children[0]


def rss_mb(worker: psutil.Process) -> float:
    return round(worker.memory_info().rss / 2**20, 1)


def in_flight(url: str) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=10) as reply:
        return json.loads(reply.read())["active"]


def stream(url: str, body: dict, chunk: int | None, pause: float, seconds: float) -> int:
    """Bytes read of a streamed completion: all of it (chunk None), or chunk bytes every pause
    seconds through a small receive buffer until seconds have passed, then the client goes."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.socket() as sock:
        if chunk is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nConnection: close\r\n"
                     + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
        read, started = 0, time.monotonic()
        while chunk is None or time.monotonic() - started < seconds:
            data = sock.recv(chunk or 1 << 16)
            if not data:
                break
            read += len(data)
            if chunk is not None:
                time.sleep(pause)
    return read


def settle(url: str, worker: psutil.Process, after: float) -> tuple[float, float]:
    """RSS once the worker has nothing in flight, and again after `after` seconds."""
    deadline = time.monotonic() + 300
    while in_flight(url) and time.monotonic() < deadline:
        time.sleep(0.2)
    at_once = rss_mb(worker)
    time.sleep(after)
    return at_once, rss_mb(worker)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", default="models:/shakespeare/1")
    parser.add_argument("--random-model", action="store_true",
                        help="random weights of the default shape (serve_load.py's)")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=2000)
    parser.add_argument("--logprobs", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=1024, help="bytes the slow reader reads")
    parser.add_argument("--pause", type=float, default=0.1, help="seconds between its reads")
    parser.add_argument("--seconds", type=float, default=20, help="until it goes")
    parser.add_argument("--after", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=1, help="fast then slow, this many times")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="slow_reader."))
    model_uri = random_package(scratch / "model") if args.random_model else args.model_uri
    server, url = launch.start([str(Path(sys.executable).with_name("tinyllm")), "serve",
                                "--model-uri", model_uri, "--workers", "1",
                                "--max-tokens-limit", str(args.max_tokens)],
                               scratch / "server.log")
    body = {"model": "", "prompt": "ROMEO:", "n": args.n, "max_tokens": args.max_tokens,
            "logprobs": args.logprobs, "stream": True, "seed": 1}
    try:
        launch.wait_until_up(f"{url}/v1/models", server, scratch / "server.log")
        with urllib.request.urlopen(f"{url}/v1/models", timeout=10) as reply:
            body["model"] = json.loads(reply.read())["data"][0]["id"]
        worker = worker_of(server.pid)
        report = {"request": body, "idle_mb": settle(url, worker, 0)[0], "readers": []}
        for reader, chunk in [("fast", None), ("slow", args.chunk)] * args.rounds:
            started = time.monotonic()
            read = stream(url, body, chunk, args.pause, args.seconds)
            seconds = round(time.monotonic() - started, 1)
            peak = rss_mb(worker)
            after = settle(url, worker, args.after)
            report["readers"].append({
                "reader": reader, "read_mb": round(read / 2**20, 2), "seconds": seconds,
                "rss_at_leaving_mb": peak, "rss_when_done_mb": after[0],
                f"rss_{args.after:g}s_later_mb": after[1]})
    finally:
        launch.stop(server)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

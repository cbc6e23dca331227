"""Load-test a served model: N requests from C concurrent clients, every reply checked.

    python scripts/serve_load.py --random-model                 # tinyllm serve, default shape
    python scripts/serve_load.py --model-uri models:/shakespeare@champion --clients 1 8 32
    python scripts/serve_load.py --server mlflow --workers 2    # mlflow models serve instead
    python scripts/serve_load.py --url http://127.0.0.1:8000    # a server that is already up
    python scripts/serve_load.py --random-model --idle-page      # each round again, page open

Starts the server itself unless --url is given (in the project's MLflow store, or the one
MLFLOW_TRACKING_URI names; --random-model: a package of random weights of params.yaml's default
shape, fine for throughput), measures the seconds from its start to its first answer, then for
each client count posts one prompt per request with seed = request number % 16. `tinyllm serve`
is asked to stream (`/v1/completions`, "stream": true), so time to first character is measured,
unless --no-stream asks for whole replies as `mlflow models serve` gives them; a reply counts as
an error unless it is HTTP 200, well-framed server-sent events ending in `data: [DONE]` (or one
JSON body), and (when the script knows the model) exactly the text `tinyllm generate` gives for
that seed. `mlflow models serve` replies must be one non-empty string. With --idle-page each
round runs twice in a row, the second time with the playground (docs/playground.md) open in
headless Chromium and idle, so the two figures stand side by side. Prints a table and one JSON
line; exits 1 on any error.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tinyllm.serving import launch
from tinyllm.serving.launch import ServerNotUp, wait_until_up

BIN = Path(sys.executable).parent
MAX_SETTLE_SEC = 600
# An idle page: Chromium's start-up work is over (2 s here) and the server has closed the page's
# keep-alive connections (uvicorn's timeout_keep_alive, 5 s), which the workers' balancing counts.
PAGE_SETTLE_S = 6
SEEDS = 16  # request i asks for seed i % SEEDS, so its text can be checked against generate


def start_tinyllm(model_uri: str, workers: int | None,
                  log_path: Path) -> tuple[subprocess.Popen, str]:
    """`tinyllm serve` in its own session, on a free port (workers None: its default)."""
    return launch.start([str(BIN / "tinyllm"), "serve", "--model-uri", model_uri,
                                 *(["--workers", str(workers)] if workers else [])], log_path)


def start_server(model_uri: str, workers: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    from tinyllm.tracking.store import choose_tracking_uri

    env = {**os.environ, "MLFLOW_TRACKING_URI": choose_tracking_uri(),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # the server execs uvicorn
    return launch.start([str(BIN / "mlflow"), "models", "serve", "-m", model_uri,
                                 "--env-manager", "local", "--host", "127.0.0.1", "--workers",
                                 str(workers)], log_path, env)


def mlflow_request(url: str, prompt: str, max_tokens: int, seed: int, expected) -> tuple:
    """(latency s, None, None if the reply was good else what was wrong) for /invocations."""
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
        elif expected is not None and predictions[0] != expected(seed):
            problem = f"seed {seed}: not the text tinyllm generate gives"
    except (OSError, ValueError, KeyError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return time.perf_counter() - started, None, problem


def sse_texts(lines) -> tuple[str, bool]:
    """The text of a streamed completion and whether it ended properly in `data: [DONE]`."""
    text, done = "", False
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith("data: ") or done:
            raise ValueError(f"bad SSE line {line!r:.80}")
        data = line[len("data: "):].strip()
        if data == "[DONE]":
            done = True
            continue
        for choice in json.loads(data)["choices"]:
            text += choice.get("text") or ""
    return text, done


def tinyllm_request(url: str, prompt: str, max_tokens: int, seed: int, expected,
                    model: str = "", stream: bool = True) -> tuple:
    """(latency s, time to first character s or None, problem or None) for a completion,
    streamed as server-sent events or (stream False) answered in one JSON body."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens,
                       "seed": seed, "stream": stream})
    started = time.perf_counter()
    first = problem = None
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", "/v1/completions", body,
                           {"Content-Type": "application/json"})
        reply = connection.getresponse()
        if reply.status != 200:
            problem = f"HTTP {reply.status}: {reply.read()!r:.120}"
            return time.perf_counter() - started, None, problem
        if not stream:
            text = json.loads(reply.read())["choices"][0]["text"]
        elif not reply.getheader("Content-Type", "").startswith("text/event-stream"):
            return time.perf_counter() - started, None, "not text/event-stream"
        else:
            lines = []
            for raw in reply:
                line = raw.decode()
                if first is None and '"text": "' in line and '"text": ""' not in line:
                    first = time.perf_counter() - started
                lines.append(line)
            text, done = sse_texts(lines)
            if not done:
                return time.perf_counter() - started, first, "no data: [DONE] at the end"
        if len(text) != max_tokens:
            problem = f"{len(text)} characters, asked for {max_tokens}"
        elif expected is not None and text != expected(seed):
            problem = f"seed {seed}: not the text tinyllm generate gives"
    except (OSError, ValueError, KeyError, IndexError, http.client.HTTPException) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()
    return time.perf_counter() - started, first, problem


def percentile(values: list[float], q: float) -> float:
    return round(1000 * sorted(values)[int(q * (len(values) - 1))], 1)


def fire(send, url: str, clients: int, requests: int, max_tokens: int, prompt: str,
         expected) -> dict:
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = list(pool.map(lambda i: send(url, prompt, max_tokens, i % SEEDS, expected),
                                range(requests)))
        wall = time.perf_counter() - started
    latencies = [latency for latency, _, _ in results]
    firsts = [first for _, first, _ in results if first is not None]
    errors = [problem for _, _, problem in results if problem]
    return {"requests": requests, "clients": clients, "max_tokens": max_tokens,
            "errors": len(errors), "first_error": errors[0] if errors else None,
            "wall_s": round(wall, 3), "requests_per_s": round(requests / wall, 2),
            "generated_chars_per_s": round(requests * max_tokens / wall, 1),
            "latency_ms": {"p50": percentile(latencies, 0.5),
                           "p95": percentile(latencies, 0.95),
                           "max": percentile(latencies, 1.0)},
            "first_char_ms": {"p50": percentile(firsts, 0.5),
                              "p95": percentile(firsts, 0.95)} if firsts else None}


@contextlib.contextmanager
def idle_page(url: str):
    """The playground at url open in Debian's headless Chromium, loaded, then left alone
    (from PAGE_SETTLE_S after it is ready on)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        page = browser.new_page()
        page.goto(f"{url}/")
        page.wait_for_selector("body[data-ready=true]")
        time.sleep(PAGE_SETTLE_S)
        try:
            yield
        finally:
            browser.close()


def rounds(send, url: str, args: argparse.Namespace, expected) -> list[dict]:
    """One result per --clients count; with --idle-page, each followed by its run again with
    the page open and idle (page: "idle")."""
    found = []
    for clients in args.clients:
        found.append(fire(send, url, clients, args.requests, args.max_tokens, args.prompt,
                          expected))
        if args.idle_page:
            with idle_page(url):
                found.append({**fire(send, url, clients, args.requests, args.max_tokens,
                                     args.prompt, expected), "page": "idle"})
    return found


def random_package(directory: Path) -> str:
    """A model package of params.yaml's default shape with random weights."""
    import torch

    from tinyllm.config import ModelConfig
    from tinyllm.model import GPT, GPTConfig
    from tinyllm.package import save_package
    from tinyllm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.fit("".join(map(chr, range(32, 127))) + "\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_params(ModelConfig(), tokenizer.vocab_size))
    return str(save_package(directory, model, tokenizer, {"random_weights": True}))


def expected_texts(model_uri: str, prompt: str, max_tokens: int):
    """seed -> the text `tinyllm generate --seed` gives, for the seeds the requests use."""
    import tinyllm

    loaded = tinyllm.load_model(model_uri)
    texts = {seed: loaded.generate(prompt, max_tokens=max_tokens, seed=seed)
             for seed in range(SEEDS)}
    return texts.__getitem__


def model_id(url: str) -> str:
    """The model a tinyllm server lists (what its requests name)."""
    with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as reply:
        return json.loads(reply.read())["data"][0]["id"]


def first_answer(url: str, server, log_path, started: float, send) -> float:
    """Seconds from the server's start to its first good answer."""
    while True:
        if server is not None and server.poll() is not None:
            raise ServerNotUp(f"the server exited with {server.returncode}; see {log_path}")
        if time.monotonic() - started > 120:
            raise ServerNotUp(f"{url} gave no answer in 120 s")
        try:
            if send(url, "ROMEO:", 1, 0, None)[2] is None:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", choices=("tinyllm", "mlflow"), default="tinyllm")
    parser.add_argument("--model-uri", default="models:/shakespeare/1")
    parser.add_argument("--random-model", action="store_true",
                        help="serve random weights of the default shape (tinyllm only)")
    parser.add_argument("--url", help="an already running server; no server is started")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=200, help="per client count")
    parser.add_argument("--max-tokens", type=int, default=50)
    parser.add_argument("--prompt", default="ROMEO:")
    parser.add_argument("--settle", type=float, default=10, metavar="SECONDS",
                        help="wait after the first answer, for every worker to be up (tinyllm "
                             "serve's others load while the first one serves)")
    parser.add_argument("--no-stream", action="store_true",
                        help="ask tinyllm serve for whole replies, as mlflow gives them")
    parser.add_argument("--workers", type=int,
                        help="server processes (default: the server's own; mlflow's is 1)")
    parser.add_argument("--idle-page", action="store_true",
                        help="run each round again with the playground open and idle "
                             "(tinyllm only; needs Chromium)")
    args = parser.parse_args()
    if min(*args.clients, args.requests, args.max_tokens, args.workers or 1) < 1:
        sys.exit("error: --clients, --requests, --max-tokens and --workers must be >= 1")
    if args.idle_page and args.server != "tinyllm":
        sys.exit("error: --idle-page: only tinyllm serve has the playground")
    if not 0 <= args.settle <= MAX_SETTLE_SEC:  # also refuses nan
        sys.exit(f"error: --settle must be between 0 and {MAX_SETTLE_SEC} seconds, got "
                 f"{args.settle}")
    return args


def load_rounds(args: argparse.Namespace, model_uri: str, scratch: Path):
    """(url, seconds to the first answer or None, one result per --clients count): the server
    started here unless --url, and stopped after."""
    mlflow = args.server == "mlflow"
    server = log_path = None
    url = args.url
    expected = None if args.url else expected_texts(model_uri, args.prompt, args.max_tokens)
    started = time.monotonic()
    if url is None:
        log_path = scratch / "server.log"
        server, url = (start_server(model_uri, args.workers or 1, log_path) if mlflow
                       else start_tinyllm(model_uri, args.workers, log_path))
    try:
        if mlflow:
            send = mlflow_request
        else:
            wait_until_up(f"{url}/v1/models", server, log_path)
            send = functools.partial(tinyllm_request, model=model_id(url),
                                     stream=not args.no_stream)
        startup = None if args.url else round(first_answer(url, server, log_path, started,
                                                           send), 2)
        if not args.url:
            time.sleep(args.settle)
        return url, startup, rounds(send, url, args, expected)
    except ServerNotUp as exc:
        sys.exit(f"error: {exc}")
    finally:
        if server is not None:
            launch.stop(server)


def print_report(args: argparse.Namespace, model_uri: str, url: str, startup, runs) -> None:
    """The table on stderr, the whole report as JSON on stdout."""
    report = {"server": args.server, "model_uri": None if args.url else model_uri,
              "random_model": args.random_model, "url": url, "startup_s": startup,
              "load_average": os.getloadavg(), "runs": runs}
    print(f"{args.server} server at {url}: {args.max_tokens} new characters per request, "
          f"every reply checked; first answer {startup} s after start; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
          f"| clients | requests | errors | requests/s | p50 ms | p95 ms | first char p50 ms |"
          f"\n|---|---|---|---|---|---|---|", file=sys.stderr)
    for run in runs:
        first = run["first_char_ms"]["p50"] if run["first_char_ms"] else "-"
        page = " (page idle)" if run.get("page") else ""
        print(f"| {run['clients']}{page} | {run['requests']} | {run['errors']} | "
              f"{run['requests_per_s']} | {run['latency_ms']['p50']} | "
              f"{run['latency_ms']['p95']} | {first} |", file=sys.stderr)
    print(json.dumps(report))


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="serve_load."))
    model_uri = random_package(scratch / "model") if args.random_model else args.model_uri
    url, startup, runs = load_rounds(args, model_uri, scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    print_report(args, model_uri, url, startup, runs)
    failed = [run for run in runs if run["errors"]]
    if failed:
        sys.exit(f"error: {failed[0]['errors']} of {failed[0]['requests']} requests failed; "
                 f"first: {failed[0]['first_error']}")


if __name__ == "__main__":
    main()

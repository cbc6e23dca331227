"""`tinyllm serve`'s processes: its options, and with several workers the parent that starts,
watches and stops them. Light to import: the app (tinyllm.serve: FastAPI, torch, MLflow) loads
only in the process that serves, so workers are spawned without the parent's import time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from tinyllm.config import SERVED_MAX_TOKENS, SERVED_REQUEST_SECONDS
from tinyllm.errors import TinyLLMError


@dataclass(frozen=True)
class Limits:
    """Server-side caps (the `tinyllm serve` options)."""

    max_tokens: int = SERVED_MAX_TOKENS  # per choice
    request_seconds: float = SERVED_REQUEST_SECONDS  # then it ends with finish_reason "length"
    max_prompt_chars: int = 100_000
    max_body_bytes: int = 16 << 20
    max_n: int = 16


@dataclass(frozen=True)
class ServeOptions:
    """What each worker process needs to load the model and serve it (picklable)."""

    uri: str | None
    host: str
    port: int
    tracking_uri: str | None
    device: str
    limits: Limits
    refresh_seconds: float
    verbose: bool = False


MAX_DEFAULT_WORKERS = 4  # each worker holds its own copy of torch, MLflow and the model


def default_workers(device: str) -> int:
    """One process per usable core on a CPU (at most MAX_DEFAULT_WORKERS), else one."""
    return min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS) if device == "cpu" else 1


def serve(options: ServeOptions, workers: int, notify) -> None:
    """Load the model, then serve it until SIGTERM/SIGINT.

    With workers > 1, that many processes accept on one socket, each with its own copy of the
    model and its own decoder: a decoding step is mostly Python, and one process runs Python on
    one core at a time. Any that fails to load ends them all.
    """
    try:  # before loading anything: a port in use is one line, at once
        listener = socket.create_server((options.host, options.port))
    except OSError as exc:
        raise TinyLLMError(f"cannot listen on {options.host}:{options.port}: "
                           f"{exc.strerror or exc}") from None
    port = listener.getsockname()[1]
    if workers == 1:
        from tinyllm import serve as app

        models = app.load(options, notify)
        notify(f"serving {app.describe(models)} on http://{options.host}:{port}/v1")
        app.run(models, options.limits, listener)
        return
    spawn = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    signal.signal(signal.SIGTERM, _interrupt)
    processes, pipes = [], []  # our ends; each worker's end closing tells it we are gone

    def start(index: int):
        ours, theirs = spawn.Pipe()
        process = spawn.Process(target=_worker, args=(options, listener, theirs),
                                name=f"tinyllm-serve-{index}")
        process.start()
        processes.append(process)
        pipes.append(ours)
        return process, ours

    try:
        # The first worker loads alone, so the first answer comes as soon as with one worker;
        # the others load while it serves.
        served, notes = _ready(*start(0))
        for note in notes:
            notify(note)
        notify(f"serving {served} on http://{options.host}:{port}/v1 ({workers} worker "
               f"processes)")
        for started in [start(index) for index in range(1, workers)]:
            _ready(*started)
        multiprocessing.connection.wait([p.sentinel for p in processes])
        ended = next(p for p in processes if not p.is_alive())
        raise TinyLLMError(f"worker process {ended.name} exited (code {ended.exitcode}); "
                           "the server stops")
    except KeyboardInterrupt:
        pass
    finally:
        _stop(processes)
        listener.close()


def _ready(process, pipe) -> tuple[str, list[str]]:
    """Wait until a worker has loaded: (what it serves, its notes); TinyLLMError if it could
    not."""
    multiprocessing.connection.wait([pipe, process.sentinel])
    problem, served, notes = pipe.recv() if pipe.poll() else ("a worker died loading", None, [])
    if problem:
        raise TinyLLMError(problem)
    return served, notes


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop the workers as for Ctrl-C


def _stop(processes) -> None:
    """SIGTERM each worker (each ends what is in flight and exits), then SIGKILL stragglers."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 5
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _worker(options: ServeOptions, listener: socket.socket, pipe) -> None:
    """A worker process: load, say so through pipe as (problem, what it serves, notes from
    loading), then serve."""
    from tinyllm import serve as app
    from tinyllm.errors import user_error_message
    from tinyllm.logs import setup_logging

    setup_logging(options.verbose)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (uvicorn then takes over)
    try:
        notes: list[str] = []
        models = app.load(options, notes.append)
    except Exception as exc:
        _tell(pipe, (user_error_message(exc) or f"worker failed: {exc!r}", None, []))
        raise SystemExit(1) from None
    if not _tell(pipe, (None, app.describe(models), notes)):
        return  # the parent is gone
    threading.Thread(target=_end_with_parent, args=(pipe,), daemon=True).start()
    app.run(models, options.limits, listener)


def _tell(pipe, message) -> bool:
    """Send message to the parent; False when it is gone."""
    try:
        pipe.send(message)
        return True
    except OSError:
        return False


def _end_with_parent(pipe) -> None:
    """SIGTERM this worker once the parent is gone, even killed by SIGKILL: its end of the pipe
    closes."""
    with contextlib.suppress(EOFError):
        pipe.recv()
    os.kill(os.getpid(), signal.SIGTERM)

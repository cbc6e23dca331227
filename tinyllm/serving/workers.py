"""`tinyllm serve`'s processes: its options, and the parent that finds the model and starts,
watches and stops the workers that serve it. Light to import: the app (tinyllm.serving.app: FastAPI,
torch) loads only in the workers, so they are spawned without the parent's import time.

Through its pipe the parent sends each worker the model, the catalog of its other versions
(catalog.py), each new catalog and each newer version of the model; a worker asks through it
for a version of the catalog (Ask), which the parent resolves and answers (Answer).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from tinyllm.errors import TinyLLMError
from tinyllm.serving.balancing import LOADING, SharedLoads
from tinyllm.serving.limits import Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """What `tinyllm serve` was asked (picklable): this process finds the model from uri and
    tracking_uri and checks it every refresh_seconds; the workers load it on device and serve
    it under the limits."""

    uri: str | None
    host: str
    port: int
    tracking_uri: str | None
    device: str
    limits: Limits
    refresh_seconds: float
    verbose: bool = False


MAX_DEFAULT_WORKERS = 4  # each worker holds its own copy of torch and the model
ASK_SECONDS = 120.0  # how long a worker waits for the parent to resolve a version


@dataclass(frozen=True)
class Ask:
    """A worker asks the parent for a version of the catalog (its models:/ URI)."""

    uri: str


@dataclass(frozen=True)
class Answer:
    """The parent's answer: the version resolved, or why it could not be."""

    uri: str
    resolved: Any  # a registry.ResolvedModel; None with problem
    problem: str | None = None


def default_workers(device: str) -> int:
    """One process per usable core on a CPU (at most MAX_DEFAULT_WORKERS), else one."""
    return min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS) if device == "cpu" else 1


def serve(options: ServeOptions, workers: int, notify) -> None:
    """Find the model, then serve it from `workers` processes until SIGTERM/SIGINT.

    Each worker accepts on one shared socket with its own copy of the model and its own decoder:
    a decoding step is mostly Python, and one process runs Python on one core at a time. The
    less busy workers take new connections first (balancing.py). This process only finds
    the model (MLflow), reads the catalog of its other versions, tells the workers of a newer
    version when an alias or /latest moves and resolves the versions they ask for, so the workers
    never import MLflow, and the first one imports torch and FastAPI while this one opens the
    registry. Any worker that fails to load ends them all.
    """
    try:  # before loading anything: a port in use is one line, at once
        listener = socket.create_server((options.host, options.port))
    except OSError as exc:
        raise TinyLLMError(f"cannot listen on {options.host}:{options.port}: "
                           f"{exc.strerror or exc}") from None
    port = listener.getsockname()[1]
    spawn = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools
    signal.signal(signal.SIGTERM, _interrupt)
    processes, pipes = [], []  # our ends; each worker's end closing tells it we are gone
    connections = spawn.Array("i", [LOADING] * workers, lock=False)  # open, per worker

    def start(index: int):
        ours, theirs = spawn.Pipe()
        process = spawn.Process(target=_worker, args=(options, listener, theirs,
                                                      SharedLoads(connections, index)),
                                name=f"tinyllm-serve-{index}")
        process.start()
        processes.append(process)
        pipes.append(ours)
        return process, ours

    try:
        first = start(0)  # importing the app while we find the model
        from tinyllm.serving.catalog import Registry
        from tinyllm.tracking import discovery

        registry = Registry(discovery.resolve(options.uri, options.tracking_uri, notify),
                            options.tracking_uri)
        first[1].send((registry.served, registry.catalog))
        # The first worker loads alone, so the first answer comes as soon as it can; the others
        # load while it serves.
        notify(f"serving {_ready(*first)} on http://{options.host}:{port}/v1 ({workers} worker "
               f"process{'es' if workers > 1 else ''})")
        for started in [start(index) for index in range(1, workers)]:
            started[1].send((registry.served, registry.catalog))
            _ready(*started)
        _run(processes, pipes, registry, options, notify)
        ended = next(p for p in processes if not p.is_alive())
        raise TinyLLMError(f"worker process {ended.name} exited (code {ended.exitcode}); "
                           "the server stops")
    except KeyboardInterrupt:
        pass
    finally:
        with _signals_ignored():  # a second Ctrl-C or SIGTERM must not cut the stop short
            _stop(processes)
        listener.close()


def _ready(process, pipe) -> str:
    """Wait until a worker has loaded: what it serves; TinyLLMError if it could not."""
    multiprocessing.connection.wait([pipe, process.sentinel])
    problem, served = pipe.recv() if pipe.poll() else ("a worker died loading", None)
    if problem:
        raise TinyLLMError(problem)
    return served


def _run(processes, pipes, registry, options: ServeOptions, notify) -> None:
    """Until a worker ends: answer what the workers ask, and for a registered model read the
    registry every refresh_seconds."""
    follow = registry.changes and options.refresh_seconds > 0
    check_at = time.monotonic() + options.refresh_seconds
    sentinels = {p.sentinel for p in processes}
    while True:
        wait = max(0.0, check_at - time.monotonic()) if follow else None
        ready = multiprocessing.connection.wait([*sentinels, *pipes], wait)
        if sentinels.intersection(ready):
            return
        for pipe in ready:
            _answer(pipe, registry)
        if follow and time.monotonic() >= check_at:
            _follow(registry, pipes, notify)
            check_at = time.monotonic() + options.refresh_seconds


def _answer(pipe, registry) -> None:
    """Resolve the version a worker asks for (downloaded once) and answer it."""
    from tinyllm.errors import user_error_message

    try:
        ask = pipe.recv()
    except (EOFError, OSError):
        return  # the worker is gone: its sentinel says so
    try:
        answer = Answer(ask.uri, registry.resolve(ask.uri))
    except Exception as exc:
        answer = Answer(ask.uri, None, user_error_message(exc) or repr(exc))
    _tell(pipe, answer)


def _follow(registry, pipes, notify) -> None:
    """Read the registry once: send every worker the catalog when it changed, and the new
    version when the alias (or /latest) moved."""
    before, uri = registry.catalog, registry.served.uri
    try:
        if registry.refresh() != before:
            for pipe in pipes:
                _tell(pipe, registry.catalog)
        moved = registry.moved()
    except Exception as exc:  # a store hiccup must not stop serving the current one
        notify(f"could not check {uri}: {exc}")
        return
    if moved is not None:
        for pipe in pipes:
            _tell(pipe, moved)
        notify(f"{uri} moved to version {moved.version}: new requests get it")


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt  # SIGTERM: stop the workers as for Ctrl-C


@contextlib.contextmanager
def _signals_ignored():
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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


def _worker(options: ServeOptions, listener: socket.socket, pipe, loads: SharedLoads) -> None:
    """A worker process: import the app, load the model the parent resolved, say so through
    pipe as (problem, what it serves), then serve."""
    from tinyllm.errors import user_error_message
    from tinyllm.logs import setup_logging
    from tinyllm.serving import app

    setup_logging(options.verbose)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (uvicorn then takes over)
    try:
        resolved, catalog = pipe.recv()
    except EOFError:
        return  # the parent is gone
    parent = Parent(pipe)
    try:
        model = app.load(resolved, options.device, catalog, parent.resolve)
    except Exception as exc:
        _tell(pipe, (user_error_message(exc) or f"worker failed: {exc!r}", None))
        raise SystemExit(1) from None
    if not _tell(pipe, (None, app.describe(model))):
        return
    threading.Thread(target=_listen, args=(parent, model), daemon=True).start()
    app.run(model, options.limits, listener, loads)


class Parent:
    """A worker's end of its pipe, once it serves: its questions to the parent, one at a time
    (_listen hands over the answers)."""

    def __init__(self, pipe):
        self.pipe, self.asking, self.answers = pipe, threading.Lock(), queue.Queue()

    def resolve(self, uri: str):
        """The registry.ResolvedModel of a catalog version, as the parent resolved it."""
        with self.asking:
            if not _tell(self.pipe, Ask(uri)):
                raise TinyLLMError("the server's main process is gone")
            deadline = time.monotonic() + ASK_SECONDS
            answer = None
            while answer is None or answer.uri != uri:  # else late, for an earlier question
                try:
                    answer = self.answers.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TinyLLMError(f"the server's main process did not find {uri} in "
                                       f"{ASK_SECONDS:.0f} s") from None
        if answer.problem:
            raise TinyLLMError(answer.problem)
        return answer.resolved


def _tell(pipe, message) -> bool:
    """Send message through pipe; False when the other end is gone."""
    try:
        pipe.send(message)
        return True
    except OSError:
        return False


def _listen(parent: Parent, model) -> None:
    """Take what the parent sends: answers, each new catalog, and each newer version, served
    from then on. SIGTERM this worker once the parent is gone, even killed by SIGKILL: its
    end of the pipe closes."""
    from tinyllm.serving.catalog import Catalog

    with contextlib.suppress(EOFError, OSError):
        while True:
            message = parent.pipe.recv()
            if isinstance(message, Answer):
                parent.answers.put(message)
            elif isinstance(message, Catalog):
                model.catalog = message
            else:
                try:
                    model.swap(message)
                except Exception as exc:  # keep serving the current one
                    log.warning("could not load %s: %s", message.uri, exc)
    os.kill(os.getpid(), signal.SIGTERM)

"""How `tinyllm serve`'s workers share new connections: real sockets, real shared memory."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tinyllm.serving.balancing import LOADING, SharedLoads


@pytest.fixture
def shared_socket():
    """A listening socket, and a function giving one more worker's listener on it."""
    counts = multiprocessing.RawArray("i", [LOADING, LOADING])
    with socket.create_server(("127.0.0.1", 0)) as server:
        listeners = []

        def worker(index: int, patience_sec: float):
            listener = SharedLoads(counts, index, patience_sec).listener(
                socket.socket(fileno=os.dup(server.fileno())))
            listener.setblocking(False)  # as asyncio holds it
            listeners.append(listener)
            return listener

        yield server.getsockname(), counts, worker
        for listener in listeners:
            listener.close()


def try_accept(listener: socket.socket):
    """What the event loop does when the socket is readable: accept, or find it taken."""
    try:
        return listener.accept()[0]
    except BlockingIOError:
        return None


def test_a_busier_worker_leaves_a_new_connection_to_a_less_busy_one(shared_socket):
    address, counts, worker = shared_socket
    busy, idle = worker(0, patience_sec=1.0), worker(1, patience_sec=1.0)
    assert list(counts) == [0, 0]  # both serving
    counts[0] = 3
    with socket.create_connection(address), ThreadPoolExecutor(2) as pool:
        # Both wake for it; the busy one first, yet the idle one takes it.
        by_busy = pool.submit(try_accept, busy)
        time.sleep(0.1)
        by_idle = pool.submit(try_accept, idle)
        taken = by_idle.result()
        assert taken is not None and by_busy.result() is None
        assert list(counts) == [3, 1]
        taken.close()
        taken.close()  # counted out once
        assert list(counts) == [3, 0]


def test_a_connection_nobody_else_takes_waits_only_the_patience(shared_socket):
    address, counts, worker = shared_socket
    busy = worker(0, patience_sec=0.3)
    counts[1] = 0  # another worker serves, less busy, but never accepts
    counts[0] = 2
    with socket.create_connection(address):
        started = time.monotonic()
        taken = try_accept(busy)
        waited = time.monotonic() - started
    assert taken is not None and 0.3 <= waited < 2
    assert counts[0] == 3
    taken.close()
    assert counts[0] == 2


def test_a_worker_still_loading_is_never_the_least_busy(shared_socket):
    address, counts, worker = shared_socket
    serving = worker(0, patience_sec=5.0)  # worker 1 has not loaded yet
    with socket.create_connection(address):
        started = time.monotonic()
        taken = try_accept(serving)
        assert taken is not None and time.monotonic() - started < 1
    assert list(counts) == [1, LOADING]
    taken.close()


def test_a_busier_worker_finding_no_connection_does_not_wait(shared_socket):
    """After each connection the event loop tries once more: that must not stall it."""
    _, counts, worker = shared_socket
    busy = worker(0, patience_sec=1.0)
    worker(1, patience_sec=1.0)
    counts[0] = 3
    started = time.monotonic()
    assert try_accept(busy) is None
    assert time.monotonic() - started < 0.5

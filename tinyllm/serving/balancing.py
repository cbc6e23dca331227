"""Spreading new connections over `tinyllm serve`'s workers by how many each already has.

Every worker accepts on the same socket, and every one of them wakes for a new connection; which
one takes it is otherwise chance (and the first to wake takes a whole burst), so one worker could
decode eight requests (long steps) while another decodes two. Here each worker counts its open
connections in memory the parent shares with all of them, and a worker with more than the least
busy one waits a moment before accepting, so that one takes the connection first. A worker that
waited still accepts if nobody did: no connection waits longer than that moment.
"""

from __future__ import annotations

import select
import socket
import time

LOADING = 2**31 - 1  # a worker's count until it serves: never the least busy
PATIENCE_SEC = 0.002  # how long a busier worker leaves a new connection to the others


class SharedLoads:
    """Each worker's count of open connections (a multiprocessing RawArray of ints, shared by
    the workers) and which of them is this worker's."""

    def __init__(self, counts, index: int, patience_sec: float = PATIENCE_SEC):
        self.counts, self.index, self.patience_sec = counts, index, patience_sec

    def listener(self, sock: socket.socket) -> socket.socket:
        """The shared listening socket sock, taken over by one that accepts by these counts;
        this worker counts as serving from now on."""
        self.counts[self.index] = 0
        return _PoliteListener(sock, self)

    def busier_than_another(self) -> bool:
        return self.counts[self.index] > min(self.counts)


class _PoliteListener(socket.socket):
    def __init__(self, sock: socket.socket, loads: SharedLoads):
        super().__init__(sock.family, sock.type, sock.proto, fileno=sock.detach())
        self.loads = loads

    def accept(self):
        waiting = select.select([self], [], [], 0)[0]  # else accept finds none: no need to wait
        if waiting and self.loads.busier_than_another():
            time.sleep(self.loads.patience_sec)
        connection, address = super().accept()
        return _CountedConnection(connection, self.loads), address


class _CountedConnection(socket.socket):
    """An accepted connection, counted until it is closed."""

    def __init__(self, connection: socket.socket, loads: SharedLoads):
        super().__init__(connection.family, connection.type, connection.proto,
                         fileno=connection.detach())
        self.loads, self.counted = loads, True
        loads.counts[loads.index] += 1

    def close(self) -> None:
        if self.counted:
            self.counted = False
            self.loads.counts[self.loads.index] -= 1
        super().close()

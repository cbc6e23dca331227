"""Progress of long work: a line redrawn in place on a terminal, log lines now and then elsewhere
(CI, DVC's logs, a pipe), so no stretch of a run is silent."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


class LiveLine:
    """Where progress lines go: stderr (or stream), redrawn on a terminal, else logged."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def show(self, line: str, *, keep: bool, log_it: bool) -> None:
        """On a terminal, redraw the line (and keep it if `keep`); elsewhere log it if `log_it`."""
        if self.tty:
            self.stream.write(f"\r\033[K{line}{chr(10) if keep else ''}")
            self.stream.flush()
        elif log_it:
            log.info(line)


class Progress(LiveLine):
    """Counted work (characters scored, samples drawn), told (done, total) as it goes: done/total,
    rate and ETA, logged every `interval` seconds off a terminal; then a last line with the time
    it took."""

    def __init__(self, label: str, unit: str, stream=None, interval: float = 10.0,
                 clock=time.monotonic):
        super().__init__(stream)
        self.label, self.unit, self.interval, self.clock = label, unit, interval, clock
        self.done = 0
        self.started = self.shown = clock()

    def __call__(self, done: int, total: int) -> None:
        self.done, now = done, self.clock()
        rate = done / max(now - self.started, 1e-9)
        due = now - self.shown >= self.interval
        if due:
            self.shown = now
        eta = duration((total - done) / rate) if done else "?"
        self.show(f"{self.label}: {done:,}/{total:,} {self.unit} ({done / max(total, 1):.0%}) "
                  f"{rate:,.0f} {self.unit}/s eta {eta}", keep=False, log_it=due)

    def finish(self, note: str = "") -> None:
        """The last line: what was done, in how long; note: what else to say about it."""
        self.show(f"{self.label}: {self.done:,} {self.unit}{note} in "
                  f"{self.clock() - self.started:.1f} s", keep=True, log_it=True)

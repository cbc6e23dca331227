"""Training progress: a live line on a terminal, periodic log lines elsewhere (CI, DVC logs)."""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the trainer (and torch) only for type hints
    from tinyllm.training.loop import StepMetrics

log = logging.getLogger(__name__)


class ProgressReporter:
    """A training callback printing step, loss, tokens/s and ETA."""

    def __init__(self, stream=None, lines: int = 20):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.lines = lines
        self.first: StepMetrics | None = None

    def eta(self, m: StepMetrics) -> str:
        if self.first is None or m.step == self.first.step:
            return "?"
        per_step = (m.elapsed_sec - self.first.elapsed_sec) / (m.step - self.first.step)
        seconds = int(per_step * (m.planned_steps - m.step))
        return f"{seconds // 60}m{seconds % 60:02d}s"

    def __call__(self, m: StepMetrics) -> None:
        if self.first is None:
            self.first = m
        val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
        line = (f"step {m.step}/{m.planned_steps} loss {m.train_loss:.4f}{val} "
                f"lr {m.lr:.2e} {m.tokens_per_sec:,.0f} tok/s eta {self.eta(m)}")
        if self.tty:
            end = "\n" if m.val_loss is not None or m.step == m.planned_steps else ""
            self.stream.write(f"\r\033[K{line}{end}")
            self.stream.flush()
        elif m.val_loss is not None or m.step % max(1, m.planned_steps // self.lines) == 0:
            log.info(line)

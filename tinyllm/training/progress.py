"""Training progress: a live line on a terminal, periodic log lines elsewhere (CI, DVC logs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tinyllm.progress import LiveLine, duration

if TYPE_CHECKING:  # the trainer (and torch) only for type hints
    from tinyllm.training.loop import StepMetrics


class ProgressReporter(LiveLine):
    """A training callback printing step, loss, tokens/s and ETA."""

    def __init__(self, stream=None, lines: int = 20):
        super().__init__(stream)
        self.lines = lines
        self.first: StepMetrics | None = None

    def eta(self, m: StepMetrics) -> str:
        if self.first is None or m.step == self.first.step:
            return "?"
        per_step = (m.elapsed_sec - self.first.elapsed_sec) / (m.step - self.first.step)
        return duration(per_step * (m.planned_steps - m.step))

    def __call__(self, m: StepMetrics) -> None:
        if self.first is None:
            self.first = m
        val = f" val {m.val_loss:.4f}" if m.val_loss is not None else ""
        line = (f"step {m.step}/{m.planned_steps} loss {m.train_loss:.4f}{val} "
                f"lr {m.lr:.2e} {m.tokens_per_sec:,.0f} tok/s eta {self.eta(m)}")
        evaluated_or_last = m.val_loss is not None or m.step == m.planned_steps
        self.show(line, keep=evaluated_or_last, log_it=evaluated_or_last or
                  m.step % max(1, m.planned_steps // self.lines) == 0)

"""What a training run leaves on disk besides the model: its summary and curves.

The curves grow while training runs (LiveCurves), so `dvc plots show` mid-run draws the curve so
far; when training ends write_history writes them whole, with the same content.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from tinyllm.io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # the trainer (and torch) only for type hints
    from tinyllm.training.loop import StepMetrics, TrainResult

SUMMARY_FILE = "summary.json"  # the run's facts, the realised plan among them
STEPS_FILE, EVAL_FILE = "steps.csv", "eval.csv"  # every step's row; each evaluation's
STEP_COLUMNS = ("step", "train_loss", "lr", "grad_norm", "tokens_per_sec")
EVAL_COLUMNS = ("step", "val_loss")


def summary_of(result: TrainResult, data_fingerprint: str) -> dict:
    """The facts about a run that go into meta.json, the summary metrics and tracking.

    Times cover the whole run (the checkpoint carries the seconds before a resume), so a resume
    with nothing left to train (a lost output, a code change) reports the real ones, not zeros.
    """
    return {
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "best_val_loss": result.best_val_loss,
        "best_val_bits_per_char": result.best_val_loss / math.log(2),
        "best_step": result.best_step,
        "planned_steps": result.plan.steps,  # the schedule's end: max_steps, or the budget's fit
        "planned_warmup_steps": result.plan.warmup_steps,
        "first_planned_steps": result.plan.segments[0][2],  # the calibration's plan
        "replans": len(result.plan.segments) - 1,  # moves of the end: the pace, a stall
        "plan_segments": [list(s) for s in result.plan.segments],  # replays every step's rate
        "data_limited_at_step": result.plan.data_limited_at,
        "eval_interval": result.plan.eval_interval,  # at most an epoch's steps under a budget
        "weight_decay": result.plan.weight_decay,  # a budget's passes may choose it
        "stopped_by": result.stopped_by,
        "time_budget_seconds": result.plan.budget_sec,
        "unused_budget_seconds": round(max(0.0, result.plan.budget_sec - result.elapsed_sec), 1)
        if result.plan.budget_sec else 0.0,
        "resumed_from_step": result.resumed_from,
        "train_seconds": round(result.elapsed_sec, 2),
        "tokens_per_sec": round(result.tokens_per_sec, 1),
        "parameters": result.model.num_parameters(),
        "data_fingerprint": data_fingerprint,
    }


def _csv(rows: list[dict], columns: tuple[str, ...], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _evals(history: list[dict]) -> list[dict]:
    return [h for h in history if h.get("val_loss") is not None]


def write_curves(directory: Path, history: list[dict]) -> None:
    """steps.csv (every step) and eval.csv (validation points), for dvc plots."""
    directory = Path(directory)
    atomic_write_text(directory / STEPS_FILE, _csv(history, STEP_COLUMNS))
    atomic_write_text(directory / EVAL_FILE, _csv(_evals(history), EVAL_COLUMNS))


def write_history(directory: Path, history: list[dict], summary: dict) -> None:
    """The curves and summary.json of a finished run."""
    write_curves(directory, history)
    atomic_write_json(Path(directory) / SUMMARY_FILE, summary)


class LiveCurves:
    """A training callback appending each step's row to steps.csv (and each evaluation's to
    eval.csv) as it happens. At the start it rewrites both from the run's history, empty for a
    fresh run and the checkpoint's for a resumed one, so no row is lost or written twice."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def on_start(self, history: list[dict], model) -> None:
        write_curves(self.directory, history)

    def __call__(self, m: StepMetrics) -> None:
        row = asdict(m)
        self._append(STEPS_FILE, row, STEP_COLUMNS)
        if m.val_loss is not None:
            self._append(EVAL_FILE, row, EVAL_COLUMNS)

    def _append(self, name: str, row: dict, columns: tuple[str, ...]) -> None:
        with open(self.directory / name, "a", encoding="utf-8") as handle:
            handle.write(_csv([row], columns, header=False))

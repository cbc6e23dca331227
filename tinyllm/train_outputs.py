"""What a finished training run leaves on disk besides the model: its summary and curves."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from tinyllm.io import atomic_write_json, atomic_write_text
from tinyllm.train import TrainResult

STEP_COLUMNS = ("step", "train_loss", "lr", "grad_norm", "tokens_per_sec")
EVAL_COLUMNS = ("step", "val_loss")


def summary_of(result: TrainResult, data_fingerprint: str) -> dict:
    """The facts about a run that go into meta.json, the summary metrics and tracking."""
    return {
        "steps": result.steps,
        "tokens_seen": result.tokens_seen,
        "best_val_loss": result.best_val_loss,
        "best_val_bits_per_char": result.best_val_loss / math.log(2),
        "best_step": result.best_step,
        "planned_steps": result.plan.steps,  # the schedule's end: max_steps, or the budget's fit
        "planned_warmup_steps": result.plan.warmup_steps,
        "stopped_by": result.stopped_by,
        "time_budget_seconds": result.plan.budget_sec,
        "resumed_from_step": result.resumed_from,
        "train_seconds": round(result.elapsed_sec, 2),
        "tokens_per_sec": round(result.tokens_per_sec, 1),
        "parameters": result.model.num_parameters(),
        "data_fingerprint": data_fingerprint,
    }


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_history(directory: Path, history: list[dict], summary: dict) -> None:
    """steps.csv (every step), eval.csv (validation points) and summary.json, for dvc plots."""
    directory = Path(directory)
    atomic_write_text(directory / "steps.csv", _csv(history, STEP_COLUMNS))
    evals = [h for h in history if h.get("val_loss") is not None]
    atomic_write_text(directory / "eval.csv", _csv(evals, EVAL_COLUMNS))
    atomic_write_json(directory / "summary.json", summary)

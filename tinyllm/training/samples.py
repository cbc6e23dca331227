"""Samples while training: at every evaluation, short fixed-seed continuations of the evaluate
prompts, so a learner watches the text go from noise to Shakespeare.

They are kept in the run's history (so a checkpoint holds them and a resumed run has the same
samples as an uninterrupted one), appended to models/train/samples.md, and handed to `log` (the
MLflow table of the run) as they come.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from tinyllm.config import SamplingConfig
from tinyllm.generate import generate_text
from tinyllm.io import atomic_write_text
from tinyllm.tokenizer import CharTokenizer
from tinyllm.training.loop import StepMetrics

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.md"
SETTINGS = replace(SamplingConfig(), max_tokens=100)  # short: read at a glance, cheap
HEADER = ("# Samples while training\n\nAt each evaluation, the evaluate prompts continued with "
          + ", ".join(f"{k}={v}" for k, v in asdict(SETTINGS).items()) + ".\n")


def rows_of(entry: dict) -> list[dict]:
    """The (step, prompt, text) rows of one history entry; none where it has no samples."""
    return [{"step": entry["step"], "prompt": p, "text": t}
            for p, t in entry.get("samples", {}).items()]


def markdown(rows: list[dict], val_loss: float) -> str:
    step = rows[0]["step"]
    parts = [f"\n## Step {step} (validation loss {val_loss:.4f})\n"]
    parts += [f"```text\n{r['prompt']}{r['text']}\n```\n" for r in rows]
    return "\n".join(parts)


class TrainingSamples:
    """A training callback sampling the model at each evaluation."""

    def __init__(self, directory: Path, tokenizer: CharTokenizer, prompts: list[str],
                 log_rows: Callable[[list[dict]], None] | None = None):
        self.path = Path(directory) / SAMPLES_FILE
        self.tokenizer, self.prompts, self.log_rows = tokenizer, list(prompts), log_rows
        self.history: list[dict] = []
        self.model = None

    def on_start(self, history: list[dict], model) -> None:
        """Rewrite the file (and the new run's table) from the samples the run already has."""
        self.history, self.model = history, model
        evaluated = [h for h in history if h.get("samples")]
        atomic_write_text(self.path, HEADER + "".join(
            markdown(rows_of(h), h["val_loss"]) for h in evaluated))
        rows = [row for h in evaluated for row in rows_of(h)]
        if rows and self.log_rows:
            self.log_rows(rows)

    def rehearse(self, model) -> None:
        """An evaluation's sampling on another model, kept nowhere: what a budget's calibration
        times (about a second a round on a 2-core CPU, a share of a one-minute budget)."""
        for prompt in self.prompts:
            generate_text(model, self.tokenizer, prompt, SETTINGS)

    def __call__(self, m: StepMetrics) -> None:
        if m.val_loss is None or self.model is None or not self.prompts:
            return
        started = time.perf_counter()
        samples = {p: generate_text(self.model, self.tokenizer, p, SETTINGS)
                   for p in self.prompts}
        self.model.train()  # generation switched it to eval mode
        log.info("step %d: sampled %d prompt(s), %d characters each, in %.2f s", m.step,
                 len(samples), SETTINGS.max_tokens, time.perf_counter() - started)
        entry = self.history[-1]
        entry["samples"] = samples  # the checkpoint keeps them for a resume
        rows = rows_of(entry)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(markdown(rows, m.val_loss))
        if self.log_rows:
            self.log_rows(rows)

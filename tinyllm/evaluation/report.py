"""Human-facing evaluation artifacts: the samples page and the loss-curve image."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from tinyllm.config import SamplingConfig
from tinyllm.corpus import TEST
from tinyllm.io import atomic_write
from tinyllm.training.outputs import EVAL_FILE, STEPS_FILE, SUMMARY_FILE

# What models/eval/metrics.json (the DVC metric) holds of each split's scores: what a person
# compares in `dvc exp show`, test first. Few and narrow, so an experiment's changed params still
# fit beside them at 120 columns; bits/char (loss / ln 2), perplexity and the characters scored
# are in the MLflow run. loss_ci95 only where a split was scored on a sample (evaluate.max_chars).
DVC_METRICS = ("loss", "loss_ci95")


def dvc_metrics(scores: dict[str, dict]) -> dict:
    """{split: {measure: value}} of DVC_METRICS that the scores have, test first (DVC's first
    metric column)."""
    order = sorted(scores, key=lambda split: split != TEST)
    return {split: {key: scores[split][key] for key in DVC_METRICS if key in scores[split]}
            for split in order}


def samples_markdown(samples: dict[str, str], settings: SamplingConfig) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
    parts = [f"# Samples\n\nSampling: {knobs}\n"]
    for prompt, text in samples.items():
        parts.append(f"## Prompt: {prompt.strip()!r}\n\n```text\n{prompt}{text}\n```\n")
    return "\n".join(parts)


def _read_columns(path: Path, *columns: str) -> list[list[float]]:
    """The named columns of a CSV as floats, over the rows where the last one has a value."""
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(columns[-1])]
    return [[float(r[c]) for r in rows] for c in columns]


def step_minutes(train_dir: Path) -> dict[int, float]:
    """Step -> minutes of training steps so far (each step's time from its tokens/s; the time
    spent on evaluations is not counted, and a resumed run continues where it stopped)."""
    summary = json.loads((Path(train_dir) / SUMMARY_FILE).read_text())
    tokens_per_step = summary["tokens_seen"] / max(1, summary["steps"])
    steps, speeds = _read_columns(Path(train_dir) / STEPS_FILE, "step", "tokens_per_sec")
    seconds = np.cumsum(tokens_per_step / np.maximum(speeds, 1e-9))
    return {int(step): float(t) / 60 for step, t in zip(steps, seconds, strict=True)}


def loss_curve_png(train_dir: Path, out: Path) -> Path:
    """Train loss at every step and validation loss at each evaluation, against step (left)
    and against minutes of training (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train_dir = Path(train_dir)
    train = _read_columns(train_dir / STEPS_FILE, "step", "train_loss")
    val = _read_columns(train_dir / EVAL_FILE, "step", "val_loss")
    minutes = step_minutes(train_dir)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100, sharey=True)
    for ax, x_of, label in ((axes[0], lambda s: s, "step"),
                            (axes[1], lambda s: [minutes[int(i)] for i in s],
                             "minutes of training (evaluations excluded)")):
        ax.plot(x_of(train[0]), train[1], label="train", linewidth=0.8, alpha=0.7)
        ax.plot(x_of(val[0]), val[1], label="validation", marker="o", markersize=3)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss (nats/char)")
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out

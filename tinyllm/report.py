"""Human-facing evaluation artifacts: the samples page and the loss-curve image."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

from tinyllm.config import SamplingConfig
from tinyllm.io import atomic_write


def samples_markdown(samples: dict[str, str], settings: SamplingConfig) -> str:
    knobs = ", ".join(f"{k}={v}" for k, v in asdict(settings).items())
    parts = [f"# Samples\n\nSampling: {knobs}\n"]
    for prompt, text in samples.items():
        parts.append(f"## Prompt: {prompt.strip()!r}\n\n```text\n{prompt}{text}\n```\n")
    return "\n".join(parts)


def _read_columns(path: Path, x: str, y: str) -> tuple[list[float], list[float]]:
    with open(path, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(y)]
    return [float(r[x]) for r in rows], [float(r[y]) for r in rows]


def loss_curve_png(train_dir: Path, out: Path) -> Path:
    """Train loss at every step and validation loss at each evaluation, against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*_read_columns(Path(train_dir) / "steps.csv", "step", "train_loss"),
            label="train", linewidth=0.8, alpha=0.7)
    ax.plot(*_read_columns(Path(train_dir) / "eval.csv", "step", "val_loss"),
            label="validation", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return out

"""A tiny project for end-to-end tests: a corpus of several play-like works and tiny params."""

from __future__ import annotations

import random
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ("ROMEO", "JULIET", "NURSE", "FRIAR", "TYBALT")
WORDS = ("love", "night", "light", "sweet", "death", "fair", "heaven", "hath", "thou", "doth")


def tiny_work(seed: int, lines: int = 120) -> str:
    """A few KB of play-like text: speaker lines followed by verse."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        out.append(f"{rng.choice(SPEAKERS)}:")
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))) + ".")
        out.append("")
    return "\n".join(out)


def tiny_params(corpus: str, **overrides) -> dict:
    """The repo's params.yaml, shrunk to a model that trains in a second or two."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    tiny = {
        "data.corpus": corpus, "data.val_fraction": 0.2, "data.test_fraction": 0.2,
        "model.context_length": 16, "model.n_layer": 1, "model.n_head": 2, "model.d_model": 32,
        "train.max_steps": 30, "train.batch_size": 8, "train.warmup_steps": 5,
        "train.eval_interval": 10, "train.eval_batches": 2, "train.checkpoint_interval": 10,
        "train.learning_rate": 3e-3, "evaluate.batch_size": 16, "evaluate.prompts": ["ROMEO:"],
        "evaluate.max_new_tokens": 20, "tracking.experiment": "tests",
        "tracking.registry_name": "tiny",
    }
    for key, value in {**tiny, **overrides}.items():
        section, name = key.split(".")
        raw[section][name] = value
    return raw


def write_corpus(directory: Path, works: int = 5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(works):
        (directory / f"work_{i}.txt").write_text(tiny_work(i), encoding="utf-8")
    return directory


def write_params(path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")

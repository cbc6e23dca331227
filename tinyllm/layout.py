"""Where each step of a model's life reads and writes: the one definition of the pipeline's paths.

Plain paths, no torch or MLflow: the commands that look for a model (tracking/discovery.py,
`tinyllm compare`) read them too, and `tinyllm --help` must answer at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

EVAL_METRICS = Path("eval/metrics.json")  # beside the model package: models/eval/metrics.json


def evaluation_of(package: Path | str) -> Path:
    """The metrics file evaluate writes for the model package at `package`."""
    return Path(package).parent / EVAL_METRICS


@dataclass(frozen=True)
class Layout:
    """Where each step reads and writes; the defaults are the DVC pipeline's (see dvc.yaml)."""

    root: Path = Path(".")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def validated(self) -> Path:
        return self.root / "data/validated.txt"

    @property
    def prepared(self) -> Path:
        return self.root / "data/prepared"

    def prepared_text(self, split: str) -> Path:
        """One split's cleaned text (corpus.SPLITS)."""
        return self.prepared / f"{split}.txt"

    @property
    def tokens(self) -> Path:
        return self.root / "data/tokens"

    @property
    def tokenizer(self) -> Path:
        return self.root / "models/tokenizer.json"

    @property
    def model(self) -> Path:
        return self.root / "models/model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "models/checkpoints"

    @property
    def train_dir(self) -> Path:
        return self.root / "models/train"

    @property
    def eval_dir(self) -> Path:
        return self.eval_metrics.parent

    @property
    def eval_metrics(self) -> Path:
        return evaluation_of(self.model)

    @property
    def run_handoff(self) -> Path:
        return self.train_dir / "mlflow_run.json"

"""Shared tiny fixtures: a corpus, its tokenizer and model/training configs small enough for CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Tiny models run fastest on one thread, and subprocesses (dvc, mlflow) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# MLflow's own processes (mlflow server, mlflow models serve) draw no download bars either, as
# tinyllm itself does not (tinyllm.tracking.store).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np
import pytest
import torch
from tiny_project import (
    TINY_TEXT,
    build_dvc_project,
    copy_store,
    dvc_env,
    shared_dir,
    tiny_params,
    write_corpus,
)

from tinyllm.config import Params, TrainConfig, params_from_dict
from tinyllm.model import GPT, GPTConfig
from tinyllm.tokenizer import CharTokenizer


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): a worker per core, at most 4; much of a test's time is
    subprocesses starting and waiting, so two cores gain from two workers."""
    return min(os.cpu_count() or 1, 4)


# The longest modules (a minute or more each), started first so that pytest-xdist's workers
# finish together instead of one of them running a long test alone at the end.
SLOW_FIRST = ("integration/test_sweep.py", "test_distributed.py", "integration/test_pipeline.py",
              "faults/test_interruption.py", "test_train.py", "faults/test_pipeline_integrity.py")


def pytest_collection_modifyitems(config, items) -> None:
    def rank(item) -> int:
        path = item.path.as_posix()
        return next((i for i, name in enumerate(SLOW_FIRST) if path.endswith(f"tests/{name}")),
                    len(SLOW_FIRST))
    items.sort(key=rank)  # stable: the order within a module and among the rest is kept


@pytest.fixture
def tiny_text() -> str:
    return TINY_TEXT


@pytest.fixture
def tokenizer() -> CharTokenizer:
    return CharTokenizer.fit(TINY_TEXT)


@pytest.fixture
def tokens(tokenizer) -> np.ndarray:
    return tokenizer.encode(TINY_TEXT)


@pytest.fixture
def gpt_config(tokenizer) -> GPTConfig:
    return GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=2, n_head=2,
                     d_model=32, dropout=0.0)


@pytest.fixture
def model(gpt_config) -> GPT:
    torch.manual_seed(0)
    return GPT(gpt_config).eval()


@pytest.fixture
def train_config() -> TrainConfig:
    return TrainConfig(seed=0, max_steps=20, batch_size=4, learning_rate=3e-3, warmup_steps=2,
                       eval_interval=10, eval_batches=2, checkpoint_interval=5, device="cpu")


@pytest.fixture
def corpus_dir(tmp_path):
    """A directory of five small play-like works."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture
def make_params(corpus_dir):
    """Validated tiny Params over corpus_dir; overrides as {"train.max_steps": 5}."""
    def make(**overrides) -> Params:
        return params_from_dict(tiny_params(str(corpus_dir), **overrides))
    return make


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """An empty MLflow sqlite store, created and migrated once per session (seconds of
    migrations), which new_store copies (milliseconds)."""
    from tinyllm.tracking.store import Store

    def create(directory: Path) -> None:
        Store(f"sqlite:///{directory / 'mlflow.db'}")
    return shared_dir(tmp_path_factory, "store-template", create) / "mlflow.db"


@pytest.fixture
def new_store(store_template):
    """new_store(directory): a fresh, empty store at directory/mlflow.db; its sqlite URI.

    Where a test's point is a store's creation (tests/faults/test_concurrency.py,
    tests/integration/test_sweep.py) it creates its own instead.
    """
    return lambda directory: copy_store(store_template, Path(directory))


@dataclass
class BuiltProject:
    root: Path  # shared by the session: copy it (tiny_project.copy_project) to change anything
    output: str  # what its first `dvc repro`, from scratch, printed
    env: dict  # the environment to run dvc in


@pytest.fixture(scope="session")
def built_project(tmp_path_factory, store_template) -> BuiltProject:
    """The tiny DVC project after `dvc repro`, built once per session (a minute of dvc)."""
    directory = shared_dir(tmp_path_factory, "dvc-built",
                           lambda d: build_dvc_project(d, store_template))
    return BuiltProject(directory / "project", (directory / "repro.log").read_text(), dvc_env())

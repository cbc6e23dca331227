"""A tiny project for end-to-end tests: a corpus of several play-like works and tiny params."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tinyllm import workflow
from tinyllm.config import params_from_dict, set_keys
from tinyllm.io import exclusive_lock

ROOT = Path(__file__).resolve().parents[1]
SPEAKERS = ("ROMEO", "JULIET", "NURSE", "FRIAR", "TYBALT")
WORDS = ("love", "night", "light", "sweet", "death", "fair", "heaven", "hath", "thou", "doth")


# A short text for unit tests (a fixture, tiny_text); test modules import it from here.
TINY_TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\n"
    "It is the east, and Juliet is the sun.\n\n"
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\n"
    "Deny thy father and refuse thy name.\n"
) * 4


# A package of GPT-2's block that tinyllm wrote before packages recorded their block (e16527a,
# format_version 1), and what that code sampled from it: "ROMEO:", 40 characters, seed 1337,
# temperature 0.8.
OLD_BLOCK_PACKAGE = ROOT / "tests" / "fixtures" / "gpt2_block_package"
OLD_BLOCK_TEXT = " BulEO: But broft bft breakowh br younde"


def tiny_work(seed: int, lines: int = 120) -> str:
    """A few KB of play-like text: speaker lines followed by verse."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        out.append(f"{rng.choice(SPEAKERS)}:")
        out.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 8))) + ".")
        out.append("")
    return "\n".join(out)


def untrained_package(directory: Path, seed: int = 0) -> Path:
    """A one-layer model package, untrained (weights drawn from seed), over two tiny works'
    characters: what a server or sampler needs when no test reads the text's quality."""
    import torch

    from tinyllm.model import GPT, GPTConfig
    from tinyllm.package import save_package
    from tinyllm.tokenizer import CharTokenizer

    tokenizer = CharTokenizer.fit("".join(tiny_work(i, lines=20) for i in range(2)))
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=1,
                          n_head=2, d_model=32))
    return save_package(directory / "tiny", model, tokenizer, {})


def register_packages(store_uri: str, name: str, packages: list[Path]) -> list[str]:
    """Each package registered in the store as the next version of name, its source the
    package's directory, trained (so to speak) by a run of its own: a registry to serve from in
    a second, where the pipeline would take a minute. The runs' ids, in order."""
    from mlflow.exceptions import MlflowException

    from tinyllm.tracking.store import Store

    store = Store(store_uri)
    client = store.client
    with contextlib.suppress(MlflowException):  # registered before
        client.create_registered_model(name)
    experiment = store.experiment_id("registered")
    runs = [client.create_run(experiment).info.run_id for _ in packages]
    for package, run in zip(packages, runs, strict=True):
        client.create_model_version(name, str(package), run)
    return runs


def tiny_params(corpus: str, **overrides) -> dict:
    """The repo's params.yaml, shrunk to a model that trains in a second or two."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    tiny = {
        "data.corpus": corpus, "data.val_fraction": 0.2, "data.test_fraction": 0.2,
        "model.context_length": 16, "model.n_layer": 1, "model.n_head": 2, "model.d_model": 32,
        "train.max_steps": 30, "train.batch_size": 8, "train.warmup_steps": 5,
        "train.eval_interval": 10, "train.eval_batches": 2, "train.checkpoint_interval": 10,
        "train.learning_rate": 3e-3, "train.device": "cpu",  # the same run on any machine
        "evaluate.batch_size": 16, "evaluate.prompts": ["ROMEO:"],
        "evaluate.max_tokens": 20, "tracking.experiment": "tests",
        "tracking.registry_name": "tiny",
    }
    return set_keys(raw, {**tiny, **overrides})


def write_corpus(directory: Path, works: int = 5) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(works):
        (directory / f"work_{i}.txt").write_text(tiny_work(i), encoding="utf-8")
    return directory


def write_params(path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


def run(args, cwd, env, timeout: float = 300) -> str:
    """Run a command that must succeed; its stdout and stderr together."""
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def dvc_env() -> dict:
    """The environment to run dvc in: this venv first on PATH, no MLFLOW_/DVC_ leaks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    return env


def make_dvc_project(repo: Path, store: Path | None = None) -> dict:
    """A fresh git+DVC repo at `repo` holding the pipeline, the library and a tiny corpus; with
    `store` (an empty mlflow.db), a copy of it as the project's, uncommitted. Returns dvc_env().
    """
    repo.mkdir(parents=True)
    for name in ("dvc.yaml", "pipeline", "tinyllm"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, repo / name)
    write_corpus(repo / "data/raw/tiny")
    write_params(repo / "params.yaml", tiny_params("data/raw/tiny"))
    env = dvc_env()
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    if store is not None:
        copy_store(store, repo)
    return env


def build_dvc_project(directory: Path, store: Path) -> None:
    """directory/project: make_dvc_project, then `dvc repro` (its output in directory/repro.log)
    and a commit "built" of the results, the MLflow store beside them and ignored by git."""
    repo = directory / "project"
    env = make_dvc_project(repo, store)
    (directory / "repro.log").write_text(run(["dvc", "repro"], repo, env))
    (repo / ".gitignore").write_text("mlflow.db*\nmlruns/\n")
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "built"], repo, env)


def copy_store(template: Path, directory: Path) -> str:
    """A copy of the store file `template` as directory/mlflow.db; its sqlite URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def copy_project(source: Path, target: Path) -> Path:
    """A copy of a built project, its mlflow.db re-homed to the copy's mlruns/ (as `tinyllm
    rehome` does): the store records absolute artifact locations, and tinyllm refuses to log
    into a store whose artifacts lie outside its directory."""
    from tinyllm.tracking.store import Store, rehome_artifacts

    shutil.copytree(source, target, symlinks=True)
    if (target / "mlflow.db").exists():
        rehome_artifacts(Store(f"sqlite:///{target / 'mlflow.db'}"))
    return target


def shared_dir(tmp_path_factory, name: str, build) -> Path:
    """A directory built once per test session (build(directory)) and shared by its
    pytest-xdist workers: the first to take the lock builds it, the others wait for it.
    Tests only read it, or copy it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's, the same for every worker
    directory, done = root / name, root / f"{name}.done"
    with exclusive_lock(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir()
            build(directory)
            done.touch()
    return directory


def wait_for_checkpoint(process: subprocess.Popen, path: Path, timeout: float = 120) -> None:
    """Wait until a training process has written its first checkpoint (failing if it died)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def make_project(root: Path, corpus: Path, **overrides) -> workflow.Layout:
    """A project dir with params.yaml (tracking off) and its data prepared and tokenized."""
    raw = tiny_params(str(corpus), **{"tracking.enabled": False, **overrides})
    root.mkdir(parents=True)
    write_params(root / "params.yaml", raw)
    layout = workflow.Layout(root)
    params = params_from_dict(raw)
    workflow.build(params, layout, through=workflow.tokenize)
    return layout


def start_stage(layout: workflow.Layout, launcher: list[str]) -> subprocess.Popen:
    """The DVC train stage, `python -m pipeline.train`, as one process or under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*launcher, "-m", "pipeline.train"], cwd=layout.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def train_stage(layout: workflow.Layout, launcher: list[str]) -> tuple[int, str]:
    process = start_stage(layout, launcher)
    out, err = process.communicate(timeout=120)
    return process.returncode, out + err

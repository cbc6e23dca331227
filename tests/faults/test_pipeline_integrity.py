"""What a user types at a built project loses nothing and records the truth (real dvc, real MLflow).

Refused params and corpora stop `dvc exp run` before DVC removes any output; dvc started from
outside the project's environment either runs the stages in .venv or stops in one line before
removing anything; an evaluate-only experiment gets its own MLflow run, nested under train's.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from tiny_project import build_dvc_project, dvc_env, run

DVC = str(Path(sys.executable).parent / "dvc")
# Every stage's outputs but validate's stamp, which validate itself removes before it fails.
OUTPUTS = ("data/prepared", "data/tokens", "models/model",
           "models/train", "models/eval", "models/tokenizer.json")


@pytest.fixture(scope="session")
def built(tmp_path_factory, store_template):
    """A tiny project after `dvc repro`, committed, with its MLflow store beside it; the tests
    of this module change it in turn. Built here, not copied from built_project: the MLflow
    hand-off names its store's absolute path, and `tinyllm restore` must write back the very
    same file. Session scope: once per xdist worker (a module fixture is torn down and built
    again whenever a worker runs another module's test in between)."""
    directory = tmp_path_factory.mktemp("integrity")
    build_dvc_project(directory, store_template)
    return directory / "project", dvc_env()


def snapshot(repo: Path) -> dict[str, str]:
    """Every output file's content hash, by path."""
    files = {}
    for name in OUTPUTS:
        path = repo / name
        for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            files[str(file.relative_to(repo))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return files


def dvc(args: list[str], repo: Path, env: dict) -> subprocess.CompletedProcess:
    params = (repo / "params.yaml").read_text()
    result = subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    (repo / "params.yaml").write_text(params)  # a failed exp run leaves its -S values there
    return result


@pytest.mark.parametrize("setting, message", [
    ("model.n_head=0", "error: model.n_head must be >= 1, got 0"),
    ("data.corpus=pictures", "error: no text files (.txt, .text, .md) found under directory "
                             "pictures"),
])
def test_refused_params_stop_dvc_exp_run_before_any_output_is_removed(built, setting, message):
    repo, env = built
    (repo / "pictures").mkdir(exist_ok=True)
    (repo / "pictures/cover.png").write_bytes(b"\x89PNG")
    before = snapshot(repo)
    assert "models/train/summary.json" in before and "data/prepared/train.txt" in before
    result = dvc(["exp", "run", "-S", setting], repo, env)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "tinyllm restore" not in result.stderr  # outputs present and cached: nothing lost
    assert snapshot(repo) == before


def lock_from_elsewhere(lock: str, paths: tuple[str, ...]) -> str:
    """dvc.lock as another machine's run left it: paths locked at versions this cache lacks."""
    for n, path in enumerate(paths):
        start = lock.index("md5: ", lock.index(f"- path: {path}\n")) + len("md5: ")
        lock = lock.replace(lock[start:start + 32], "abcdef"[n] * 32)
    return lock


def test_a_refused_exp_run_under_a_lock_from_elsewhere_names_the_one_command_back(built):
    """After `git checkout -- .` following `make run`, dvc.lock names another machine's outputs.
    `dvc exp run` then deletes models/model and the MLflow hand-off before validate runs (DVC
    checks out what dvc.lock names); the refusal names `tinyllm restore`, which writes the same
    files back from the registry."""
    repo, env = built
    before = snapshot(repo)
    lock = (repo / "dvc.lock").read_text()
    (repo / "dvc.lock").write_text(
        lock_from_elsewhere(lock, ("models/model", "models/train/mlflow_run.json")))
    try:
        result = dvc(["exp", "run", "-S", "model.n_head=0"], repo, env)
        assert result.returncode != 0
        assert ("error: model.n_head must be >= 1, got 0; DVC removed models/model (dvc.lock "
                "names a version its cache lacks); `tinyllm restore` writes the latest "
                "registered model back") in result.stdout + result.stderr
        assert not (repo / "models/model").exists()  # DVC's checkout, before any stage ran
        restored = run([str(Path(sys.executable).parent / "tinyllm"), "restore"], repo, env)
        assert restored.startswith("restored models:/tiny/latest (version 1) to ")
    finally:
        (repo / "dvc.lock").write_text(lock)
    assert snapshot(repo) == before  # the same weights, package and MLflow run hand-off


def bare_python(directory: Path) -> Path:
    """An interpreter without the project's packages, as a system python3 is."""
    venv.create(directory, with_pip=False)
    return directory / "bin"


def test_dvc_outside_the_environment_stops_in_one_line_or_runs_in_dot_venv(built, tmp_path):
    repo, env = built
    bare = {**env, "PATH": f"{bare_python(tmp_path / 'system')}{os.pathsep}/usr/bin:/bin"}
    before = snapshot(repo)
    result = dvc(["exp", "run", "-S", "evaluate.seed=3"], repo, bare)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "lacks the project's packages (no module named" in output
    assert "activate the project's environment" in output and "Traceback" not in output
    assert snapshot(repo) == before

    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    try:
        result = dvc(["exp", "run", "-n", "seed-two", "-S", "evaluate.seed=2"], repo, bare)
    finally:
        (repo / ".venv").unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'evaluate'" in result.stdout
    assert "Running stage 'train'" not in result.stdout
    check_evaluate_only_run_is_its_own(repo)


def check_evaluate_only_run_is_its_own(repo: Path) -> None:
    """The train run keeps its evaluation; the evaluate-only run is nested under it."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    [child] = [r for r in runs if r.data.tags.get("dvc.experiment") == "seed-two"]
    parent = client.get_run(child.data.tags["mlflow.parentRunId"])
    assert child.info.run_name == "tiny evaluate.seed=2 (seed-two)"  # what it changed
    assert parent.info.run_name == "tiny" and child.info.status == "FINISHED"
    assert child.data.params["evaluate.seed"] == "2"
    assert parent.data.params["evaluate.seed"] == "1337"
    assert "eval_test_loss" in child.data.metrics and "eval_test_loss" in parent.data.metrics
    assert "tinyllm.steps" in parent.data.tags and "tinyllm.steps" not in child.data.tags
    # What `mlflow ui` shows as Source and Version; train ran before the "built" commit.
    for record, stage, rev in ((child, "evaluate", "HEAD"), (parent, "train", "HEAD~1")):
        assert record.data.tags["mlflow.source.name"] == f"dvc.yaml:{stage}"
        assert record.data.tags["mlflow.source.type"] == "LOCAL"
        assert record.data.tags["mlflow.source.git.commit"] == run(
            ["git", "rev-parse", rev], repo, dict(os.environ)).strip()
    for run_info, seed in ((child, 2), (parent, 1337)):
        samples = Path(client.download_artifacts(run_info.info.run_id, "eval/samples.md"))
        assert f"seed={seed}" in samples.read_text()

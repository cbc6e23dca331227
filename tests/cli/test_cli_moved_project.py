"""A project that is copied, moved or renamed keeps its models: mlflow.db records absolute
artifact paths, tinyllm reads them from the project's own mlruns/, and `tinyllm rehome` rewrites
them for MLflow's own tools."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow

from tinyllm.package import load_package
from tinyllm.tracking.runs import TrackedRun
from tinyllm.tracking.store import Store

WARNING = "where the project was before; reading them from {home}/mlruns (run `tinyllm rehome`"


def make_project(root: Path, package: Path) -> str:
    """A project at root (.dvc/, mlflow.db, mlruns/) with package registered as served/1;
    returns the run id."""
    (root / ".dvc").mkdir(parents=True)
    with TrackedRun.start(Store(f"sqlite:///{root / 'mlflow.db'}"), "moved-tests",
                         "served", {}, {}) as run:
        run.register(package, "served", 2.0, 2.0, "data")
        return run.id


def relocate(how: str, project: Path, tmp_path: Path) -> Path:
    """The project's new home after `how`; the old one is gone, or (copy) left damaged."""
    target = tmp_path / {"rename": "renamed", "move": "deeper/moved", "copy": "elsewhere/copy"}[how]
    target.parent.mkdir(exist_ok=True)
    if how != "copy":
        shutil.move(project, target)
        return target.resolve()
    shutil.copytree(project, target)
    for weights in (project / "mlruns").rglob("weights.pt"):
        weights.write_bytes(b"damaged")  # the copy must not read the original's files
    return target.resolve()


def generate(invoke, uri: str):
    return invoke("generate", "--model-uri", uri, "--prompt", "ROMEO:", "--max-tokens", "10")


def test_a_renamed_moved_or_copied_project_reads_its_own_models_and_rehome_fixes_mlflow(
        invoke, tiny_model, tmp_path, monkeypatch, error_line):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the store is the project's own mlflow.db
    home = tmp_path.resolve() / "project"
    run_id = make_project(home, tiny_model.package)
    expected = "ROMEO:" + load_package(tiny_model.package).generate(
        "ROMEO:", max_tokens=10, temperature=0.8, top_k=0, top_p=1.0, seed=1337) + "\n"
    for how in ("rename", "move", "copy"):  # each from where the previous one left it
        home = relocate(how, home, tmp_path)
        monkeypatch.chdir(home / ".dvc")  # anywhere inside the project
        for uri in ("models:/served/1", f"runs:/{run_id}/model"):
            result = generate(invoke, uri)
            assert result.exit_code == 0, (how, result.stderr)
            assert result.stdout == expected
            assert WARNING.format(home=home) in result.stderr

        rehomed = invoke("rehome")
        assert rehomed.exit_code == 0, rehomed.stderr
        assert f"-> {home}/mlruns" in rehomed.stdout
        assert invoke("rehome").stdout.startswith("Nothing to do")
        result = generate(invoke, "models:/served/1")
        assert result.stdout == expected and "rehome" not in result.stderr
    # MLflow itself (mlflow ui, mlflow models serve) now reads the files here too.
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    try:
        local = mlflow.artifacts.download_artifacts("models:/served/1",
                                                    dst_path=str(tmp_path / "download"))
    finally:
        mlflow.set_tracking_uri(None)
    package = next(Path(local).rglob("weights.pt"))
    assert package.read_bytes() == (tiny_model.package / "weights.pt").read_bytes()

    # Only mlflow.db copied, and the project moved aside: the error says what to do.
    bare = tmp_path.resolve() / "bare"
    (bare / ".dvc").mkdir(parents=True)
    shutil.copy(home / "mlflow.db", bare / "mlflow.db")
    shutil.move(home, tmp_path / "aside")
    monkeypatch.chdir(bare)
    line = error_line(generate(invoke, "models:/served/1"))
    assert line.startswith(f"error: cannot download models:/served/1: {home}/mlruns/")
    assert line.endswith(f"does not exist; sqlite:///{bare}/mlflow.db was made in {home} and "
                         f"{bare}/mlruns has no copy either: copy {home}/mlruns there, then run "
                         "`tinyllm rehome`")
    assert error_line(invoke("rehome")) == (
        f"error: {bare}/mlruns does not exist: copy the project's mlruns/ beside "
        f"{bare}/mlflow.db, then run `tinyllm rehome`")

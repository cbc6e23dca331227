"""The real `dvc repro` on a copy of the pipeline with tiny params, in a temporary git repo."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_project import ROOT, tiny_params, write_corpus, write_params


def run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path):
    """A fresh git+DVC repo holding the pipeline, the library and a tiny corpus."""
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("dvc.yaml", "pipeline", "tinyllm"):
        source = ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, repo / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                      if source.is_dir() else {}))
    write_corpus(repo / "data/raw/tiny")
    write_params(repo / "params.yaml", tiny_params("data/raw/tiny"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t", MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "init"], repo, env)
    return repo, env


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


def test_repro_builds_everything_then_reruns_only_what_a_param_touches(project):
    repo, env = project
    first = run(["dvc", "repro"], repo, env)
    assert ran_stages(first) == {"prepare", "tokenize", "train", "evaluate"}
    metrics = json.loads((repo / "models/eval/metrics.json").read_text())
    vocab = json.loads((repo / "models/model/config.json").read_text())["vocab_size"]
    for split in ("val", "test"):
        assert 0 < metrics[split]["loss"] < math.log(vocab)
        assert metrics[split]["bits_per_char"] == pytest.approx(metrics[split]["loss"]
                                                                / math.log(2))
    prepared = json.loads((repo / "data/prepared/stats.json").read_text())
    assert prepared["split_by"] == "works"
    assert "ROMEO:" in (repo / "models/eval/samples.md").read_text()
    assert (repo / "models/train/steps.csv").read_text().count("\n") == 31  # header + 30 steps
    assert (repo / "models/checkpoints/last.pt").exists()
    assert (repo / "mlflow.db").exists()  # the DVC root's store, what `mlflow ui` there shows
    assert "models:/tiny/1" in first

    status = json.loads(run(["dvc", "status", "--json"], repo, env))
    assert status == {}
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["train"]["learning_rate"] = 0.005
    write_params(repo / "params.yaml", raw)
    assert set(json.loads(run(["dvc", "status", "--json"], repo, env))) == {"train"}
    second = run(["dvc", "repro"], repo, env)
    assert ran_stages(second) == {"train", "evaluate"}
    assert "models:/tiny/2" in second

    raw["evaluate"]["temperature"] = 0.5
    write_params(repo / "params.yaml", raw)
    third = run(["dvc", "repro"], repo, env)
    assert ran_stages(third) == {"evaluate"}
    assert "already registered as models:/tiny/2" in third

    assert ran_stages(run(["dvc", "repro"], repo, env)) == set()


def test_bad_params_stop_the_stage_with_one_line_naming_the_key(project):
    repo, env = project
    raw = tiny_params("data/raw/tiny")
    raw["train"]["learnig_rate"] = 0.1
    write_params(repo / "params.yaml", raw)
    result = subprocess.run([sys.executable, "-m", "pipeline.prepare"], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: unknown params key 'train.learnig_rate' "
                                     "(did you mean 'learning_rate'?)")
    assert not (repo / "data/prepared").exists()

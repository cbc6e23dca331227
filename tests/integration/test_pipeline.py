"""The real `dvc repro` on a copy of the pipeline with tiny params, in a temporary git repo."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml
from tiny_project import copy_project, make_dvc_project, run, tiny_params, write_params

from tinyllm.tracking.store import Store


@pytest.fixture
def project(tmp_path):
    repo = tmp_path / "project"
    return repo, make_dvc_project(repo)


def ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines()
            if line.startswith("Running stage '")}


def test_repro_builds_everything_then_reruns_only_what_a_param_touches(built_project, tmp_path):
    first = built_project.output  # the session's `dvc repro` from scratch
    repo, env = copy_project(built_project.root, tmp_path / "project"), built_project.env
    assert ran_stages(first) == {"validate", "prepare", "tokenize", "train", "evaluate"}
    metrics = json.loads((repo / "models/eval/metrics.json").read_text())
    vocab = json.loads((repo / "models/model/config.json").read_text())["vocab_size"]
    assert list(metrics) == ["test", "val"]  # what `dvc exp show` leads with
    for split in ("val", "test"):
        assert list(metrics[split]) == ["loss"]
        assert 0 < metrics[split]["loss"] < math.log(vocab)
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env))
    assert list(shown[""]["data"]) == ["models/eval/metrics.json"]  # no bookkeeping
    prepared = json.loads((repo / "data/prepared/stats.json").read_text())
    assert prepared["split_by"] == "works"
    assert "ROMEO:" in (repo / "models/eval/samples.md").read_text()
    assert (repo / "models/train/steps.csv").read_text().count("\n") == 31  # header + 30 steps
    assert not (repo / "models/checkpoints/last.pt").exists()  # only an interrupted run's stays
    assert "models:/tiny/1" in first
    # registered in the DVC root's store, what `mlflow ui` there shows
    assert Store(f"sqlite:///{repo / 'mlflow.db'}").client.get_model_version("tiny", "1")

    status = json.loads(run(["dvc", "status", "--json"], repo, env))
    assert status == {}
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["train"]["learning_rate"] = 0.005
    write_params(repo / "params.yaml", raw)
    assert set(json.loads(run(["dvc", "status", "--json"], repo, env))) == {"validate", "train"}
    second = run(["dvc", "repro"], repo, env)
    assert ran_stages(second) == {"validate", "train", "evaluate"}
    assert "models:/tiny/2" in second

    raw["evaluate"]["temperature"] = 0.5
    write_params(repo / "params.yaml", raw)
    third = run(["dvc", "repro"], repo, env)
    assert ran_stages(third) == {"validate", "evaluate"}
    assert "already registered as models:/tiny/2" in third

    assert ran_stages(run(["dvc", "repro"], repo, env)) == set()


def test_editing_a_server_cap_or_a_restore_message_leaves_dvc_status_clean(built_project,
                                                                            tmp_path):
    """Code no stage runs is in no stage's deps (tests/test_dvc_deps.py): changing it re-runs
    nothing. Code every stage runs, config.py, re-runs them all."""
    repo, env = copy_project(built_project.root, tmp_path / "project"), built_project.env
    edits = {"tinyllm/serving/limits.py": ("SERVED_MAX_TOKENS = 2000", "SERVED_MAX_TOKENS = 999"),
             "tinyllm/restore.py": ("move it aside to restore", "set it aside to restore")}
    for name, (old, new) in edits.items():
        text = (repo / name).read_text()
        assert old in text
        (repo / name).write_text(text.replace(old, new))
    assert json.loads(run(["dvc", "status", "--json"], repo, env)) == {}
    with open(repo / "tinyllm/config.py", "a") as config:
        config.write("# an edit\n")
    assert set(json.loads(run(["dvc", "status", "--json"], repo, env))) == set(
        yaml.safe_load((repo / "dvc.yaml").read_text())["stages"])


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

"""Bad corpora, params and prompts end in one line naming the culprit, with nothing half-made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_project import ROOT, tiny_params, write_params

from tinyllm import workflow
from tinyllm.config import params_from_dict
from tinyllm.errors import TinyLLMError


def run_stage(stage: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"pipeline.{stage}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("corpus, message", [
    ("missing_dir", "corpus path not found: missing_dir"),
    ("empty.txt", "corpus empty.txt is empty"),
    ("binary.txt", "binary.txt looks binary"),
    ("no_text", "no text files"),
])
def test_prepare_stage_rejects_bad_corpora_in_one_line(tmp_path, corpus, message):
    (tmp_path / "empty.txt").write_text("  \n\n")
    (tmp_path / "binary.txt").write_bytes(b"\x89PNG\x00\x00\x01")
    (tmp_path / "no_text").mkdir()
    (tmp_path / "no_text" / "image.png").write_bytes(b"\x89PNG")
    write_params(tmp_path / "params.yaml", tiny_params(corpus))
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/prepared").exists()


def test_malformed_params_yaml_names_the_line(tmp_path):
    (tmp_path / "params.yaml").write_text("data:\n  corpus: [unclosed\nmodel: {}\n")
    result = run_stage("prepare", tmp_path)
    assert result.returncode == 1
    assert "malformed YAML in params.yaml line" in result.stderr
    assert "Traceback" not in result.stderr


def test_corpus_shorter_than_the_context_stops_before_training(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("".join(f"line {i} of a very short text\n" for i in range(12)))
    params = params_from_dict(tiny_params(str(corpus), **{"model.context_length": 128,
                                                          "tracking.enabled": False}))
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.tokenize)
    with pytest.raises(TinyLLMError, match=r"the val split has \d+ tokens.*model.context_length"):
        workflow.train(params, layout)
    assert not layout.model.exists() and not layout.checkpoints.exists()


def test_a_single_huge_line_is_split_and_trained(tmp_path):
    corpus = tmp_path / "one_line.txt"
    corpus.write_text("to be or not to be that is the question " * 20_000)  # 800 KB, no newline
    params = params_from_dict(tiny_params(str(corpus), **{"train.max_steps": 6,
                                                          "tracking.enabled": False}))
    layout = workflow.Layout(tmp_path)
    stats = workflow.prepare(params, layout)
    assert stats["split_by"] == "contiguous slices"
    assert all(s["characters"] > 1000 for s in stats["splits"].values())
    workflow.build(params, layout, through=workflow.train)
    assert (layout.model / "weights.pt").exists()


def test_the_same_params_twice_from_scratch_give_identical_metrics(tmp_path, corpus_dir):
    params = params_from_dict(tiny_params(str(corpus_dir), **{"tracking.enabled": False,
                                                              "model.dropout": 0.1}))
    results = []
    for name in ("first", "second"):
        layout = workflow.Layout(tmp_path / name)
        results.append(workflow.build(params, layout))
    assert results[0] == results[1]
    samples = [(tmp_path / n / "models/eval/samples.md").read_text() for n in ("first", "second")]
    assert samples[0] == samples[1]


def test_enormous_prompt_keeps_the_last_context(tmp_path, model, tokenizer):
    from tinyllm.package import load_package, save_package

    save_package(tmp_path / "m", model, tokenizer)
    loaded = load_package(tmp_path / "m")
    huge = "ROMEO: " * 150_000  # ~1 MB
    assert len(loaded.generate(huge, max_tokens=8, temperature=0)) == 8
    encoded = loaded.encode_prompt(huge + "\u00e9")
    assert encoded.unknown == {"\u00e9": 1}



def test_a_corrupt_mlflow_store_stops_training_in_one_line_and_is_left_as_it_was(tmp_path,
                                                                                 corpus_dir):
    raw = tiny_params(str(corpus_dir))
    write_params(tmp_path / "params.yaml", raw)
    workflow.build(params_from_dict(raw), workflow.Layout(tmp_path), through=workflow.tokenize)
    garbage = b"this is not an sqlite database" * 100
    (tmp_path / "mlflow.db").write_bytes(garbage)
    result = run_stage("train", tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: MLflow store sqlite:///{tmp_path / 'mlflow.db'} cannot be opened: ")
    assert "Traceback" not in result.stderr
    assert (tmp_path / "mlflow.db").read_bytes() == garbage
    assert not (tmp_path / "models/model").exists()
    assert not (tmp_path / "models/checkpoints").exists()

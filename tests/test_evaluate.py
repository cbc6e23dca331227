"""Split metrics: every target scored once (or, past evaluate.max_chars, a sample of evenly
spaced windows with a confidence interval), and the derived numbers are consistent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from tiny_project import make_project, tiny_work, write_corpus

from tinyllm import workflow
from tinyllm.config import EvaluateConfig, load_params
from tinyllm.errors import TinyLLMError
from tinyllm.evaluation.scoring import (
    char_nll,
    sample_windows,
    scoring_windows,
    split_metrics,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n", "context"), [
    (17, 16), (18, 16), (19, 16), (33, 16), (100, 16), (101, 16), (1000, 32), (50, 7), (9, 2),
    (3, 2), (64, 1),
])
def test_scoring_windows_cover_every_target_exactly_once(n, context):
    scored = []
    for start, first in scoring_windows(n, context):
        assert start >= 0 and start + context <= n - 1  # a full window inside the tokens
        assert 0 <= first < context
        scored.extend(range(start + 1 + first, start + context + 1))
    assert scored == list(range(1, n))


def test_scored_characters_see_at_least_half_a_context():
    for _start, first in list(scoring_windows(500, 16))[1:]:
        assert first >= 8


def test_split_metrics_are_consistent(model, tokens):
    metrics = split_metrics(model, tokens[:100], batch_size=3)
    assert metrics["characters"] == 99
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))


def test_split_metrics_of_one_window_equal_the_plain_loss(model, tokens, gpt_config):
    window = tokens[:gpt_config.context_length + 1].astype("int64")
    data = torch.from_numpy(window)[None]
    with torch.no_grad():
        _, loss = model(data[:, :-1], data[:, 1:])
    assert split_metrics(model, window)["loss"] == pytest.approx(loss.item(), abs=1e-5)


def test_batch_size_does_not_change_metrics(model, tokens):
    a = split_metrics(model, tokens[:150], batch_size=1)
    b = split_metrics(model, tokens[:150], batch_size=32)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_untrained_model_loss_is_near_log_vocab(model, tokens, tokenizer):
    loss = split_metrics(model, tokens)["loss"]
    assert abs(loss - math.log(tokenizer.vocab_size)) < 0.1


def test_a_split_under_the_cap_is_scored_whole_as_without_one(model, tokens):
    """Up to evaluate.max_chars characters, a split is scored whole, bit for bit as with no cap
    (0), so the default corpus's metrics do not move."""
    whole = split_metrics(model, tokens, 7, max_chars=0)
    assert whole["characters"] == len(tokens) - 1 and "loss_ci95" not in whole
    assert split_metrics(model, tokens, 7, max_chars=len(tokens) - 1) == whole
    assert sample_windows(len(tokens), 16, len(tokens) - 1) is None


def test_the_default_corpus_is_under_the_default_cap():
    """dvc.lock's evaluate stage reads the default corpus's val and test tokens (2 bytes each):
    each must have no more characters to score than evaluate.max_chars's default."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text(encoding="utf-8"))
    sizes = {Path(d["path"]).stem: d["size"] for d in lock["stages"]["evaluate"]["deps"]
             if d["path"].startswith("data/tokens/")}
    assert set(sizes) == {"val", "test"}
    assert all(size // 2 - 1 <= EvaluateConfig().max_chars for size in sizes.values())


def test_sample_windows_are_evenly_spaced_regular_and_fixed():
    windows, population = sample_windows(10_000, 16, max_chars=800)
    assert len(windows) == 100  # 800 characters, 8 a window
    assert all(first == 8 for _, first in windows)  # each scores half a context
    gaps = np.diff([start for start, _ in windows])
    assert gaps.min() >= 96 and gaps.max() <= 104  # spread over the whole split
    assert sample_windows(10_000, 16, max_chars=800) == (windows, population)
    assert len(sample_windows(10_000, 16, max_chars=3)[0]) == 2  # at least two, for the CI
    assert sample_windows(10_000, 16, max_chars=9_990) is None  # nearly all: scored whole


@pytest.mark.parametrize(("n", "context", "max_chars"), [
    (10_000, 16, 800), (1000, 7, 50), (1001, 32, 100), (5000, 1, 300), (999, 2, 10),
    (300, 16, 20), (100, 64, 2)])
def test_sample_windows_are_scoring_windows_but_the_first_and_last(n, context, max_chars):
    """A sample draws from the windows whole-split scoring uses, between its first and last."""
    regular = list(scoring_windows(n, context))[1:-1]
    sample = sample_windows(n, context, max_chars)
    if sample is None:
        assert max(2, max_chars // max(1, context // 2)) >= len(regular)
        return
    windows, population = sample
    assert population == len(regular) and set(windows) <= set(regular)
    assert len(set(windows)) == len(windows) == max(2, max_chars // max(1, context // 2))


def test_a_split_over_the_cap_is_a_sample_with_a_confidence_interval(model, tokenizer):
    tokens = tokenizer.encode(tiny_work(1))[:3000]
    seen = []
    sample = split_metrics(model, tokens, 5, max_chars=400,
                           progress=lambda done, total: seen.append((done, total)))
    assert sample["characters"] == 400 and seen[-1] == (400, 400)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    windows, _ = sample_windows(len(tokens), 16, 400)
    nll = char_nll(model, tokens)  # the sample's characters, as whole-split scoring scores them
    chosen = np.concatenate([nll[start + first:start + 16] for start, first in windows])
    assert sample["loss"] == pytest.approx(chosen.mean(), abs=1e-6)
    assert 0 < sample["loss_ci95"] < 0.5
    assert abs(sample["loss"] - nll.mean()) < sample["loss_ci95"]  # it covers the whole's loss
    assert split_metrics(model, tokens, 32, max_chars=400) == pytest.approx(sample)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_evaluate_on_a_missing_device_names_the_key_and_writes_nothing(tmp_path):
    layout = make_project(tmp_path / "project", write_corpus(tmp_path / "corpus"),
                          **{"evaluate.device": "cuda"})
    params = load_params(layout.root / "params.yaml")
    with pytest.raises(TinyLLMError, match=r"^evaluate.device is 'cuda' but no CUDA device is "
                                           r"available$"):
        workflow.evaluate(params, layout)
    assert not layout.eval_dir.exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_scores_on_the_gpu_like_on_the_cpu(model, tokens):
    on_cpu = split_metrics(model, tokens)
    on_gpu = split_metrics(model.to("cuda"), tokens)
    assert on_gpu["characters"] == on_cpu["characters"]
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-4)


def test_an_untracked_package_reports_the_test_bits_of_the_evaluation_beside_it(tmp_path):
    """metrics.json holds the test loss (nats/char): chat's banner shows it in bits/char."""

    from tiny_project import untrained_package

    from tinyllm.layout import evaluation_of
    from tinyllm.tracking.discovery import load_model, recorded_test_bits

    package = untrained_package(tmp_path / "models")
    evaluation_of(package).parent.mkdir()
    evaluation_of(package).write_text(json.dumps({"test": {"loss": 1.5}, "val": {"loss": 1.4}}))
    loaded = load_model(str(package), tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert recorded_test_bits(loaded) == pytest.approx(1.5 / math.log(2))

"""Whole-split metrics: every target scored once, and the derived numbers are consistent."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_project import make_project, write_corpus

from tinyllm import workflow
from tinyllm.config import load_params
from tinyllm.errors import TinyLLMError
from tinyllm.evaluation.scoring import scoring_windows, split_metrics


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
    for _start, first in scoring_windows(500, 16)[1:]:
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
    import json

    from tiny_project import untrained_package

    from tinyllm.layout import evaluation_of
    from tinyllm.tracking.discovery import load_model, recorded_test_bits

    package = untrained_package(tmp_path / "models")
    evaluation_of(package).parent.mkdir()
    evaluation_of(package).write_text(json.dumps({"test": {"loss": 1.5}, "val": {"loss": 1.4}}))
    loaded = load_model(str(package), tracking_uri=f"sqlite:///{tmp_path / 'none.db'}")
    assert recorded_test_bits(loaded) == pytest.approx(1.5 / math.log(2))

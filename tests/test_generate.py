"""Sampling: greedy, seeds, top-k/top-p, stop strings, streaming and the sliding window."""

from __future__ import annotations

import math
import time

import pytest
import torch

from tinyllm.config import SamplingConfig
from tinyllm.generate import (
    Sampler,
    filter_logits,
    generate_text,
    sampling_logits,
    stream_text,
    stream_tokens,
)
from tinyllm.tokenizer import UNKNOWN_ID, UNKNOWN_TEXT


@pytest.fixture
def lively_model(model):
    """A random model with large weights, so greedy text is varied rather than one repeated char."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


def settings(max_tokens=40, temperature=1.0, top_k=0, top_p=1.0, seed=1, min_p=0.0):
    return SamplingConfig(max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, min_p=min_p, seed=seed)


def test_greedy_is_deterministic_and_equals_argmax(lively_model, tokenizer):
    prompt = "ROMEO:"
    text = generate_text(lively_model, tokenizer, prompt, settings(8, temperature=0, seed=1))
    assert text == generate_text(lively_model, tokenizer, prompt,
                                 settings(8, temperature=0, seed=2))
    ids = torch.from_numpy(tokenizer.encode(prompt).astype("int64"))[None]
    with torch.no_grad():
        for _ in range(8):
            logits = lively_model(ids)[0][0, -1]
            logits[UNKNOWN_ID] = -math.inf
            ids = torch.cat([ids, logits.argmax().view(1, 1)], dim=1)
    assert text == tokenizer.decode(ids[0, len(prompt):].numpy())


def test_same_seed_same_text_different_seed_different_text(lively_model, tokenizer):
    a = generate_text(lively_model, tokenizer, "O", settings(20, seed=5))
    b = generate_text(lively_model, tokenizer, "O", settings(20, seed=5))
    c = generate_text(lively_model, tokenizer, "O", settings(20, seed=6))
    assert len(a) == 20
    assert a == b
    assert a != c


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([0.3, 2.0, -1.0, 1.5, 0.9, -0.2])
    kept = filter_logits(logits, top_k=3)
    assert torch.isfinite(kept).sum() == 3
    assert set(torch.nonzero(torch.isfinite(kept)).flatten().tolist()) == {1, 3, 4}
    assert torch.equal(kept[[1, 3, 4]], logits[[1, 3, 4]])


@pytest.mark.parametrize(("top_p", "kept"), [
    (0.4, {1}),           # 0.5 alone reaches 0.4
    (0.7, {1, 3}),        # 0.5 + 0.3
    (0.85, {0, 1, 3}),    # 0.5 + 0.3 + 0.15
    (0.99, {0, 1, 2, 3}),
])
def test_top_p_keeps_smallest_set_reaching_p(top_p, kept):
    probs = torch.tensor([0.15, 0.5, 0.05, 0.3])
    logits = probs.log()
    filtered = filter_logits(logits, top_p=top_p)
    assert set(torch.nonzero(torch.isfinite(filtered)).flatten().tolist()) == kept
    index = sorted(kept)
    assert torch.equal(filtered[index], logits[index])


def test_filters_off_change_nothing():
    logits = torch.randn(10)
    assert torch.equal(filter_logits(logits, top_k=0, top_p=1.0), logits)


def test_stop_string_ends_text_before_it(lively_model, tokenizer):
    full = generate_text(lively_model, tokenizer, "ROMEO:", settings(40, seed=3))
    stop = full[20:23]
    cut = full.index(stop)
    chunks = list(stream_text(lively_model, tokenizer, "ROMEO:", settings(40, seed=3),
                              stop=[stop]))
    assert len(chunks) > 1  # it streams piece by piece
    assert "".join(chunks) == full[:cut]
    assert "".join(chunks) == generate_text(lively_model, tokenizer, "ROMEO:",
                                            settings(40, seed=3), stop=[stop])


def test_text_held_back_for_a_stop_string_that_never_completes_is_emitted(lively_model,
                                                                         tokenizer):
    full = generate_text(lively_model, tokenizer, "ROMEO:", settings(15, seed=4))
    stop = full[-1] + "\x00"  # its first character occurs, the whole string never can
    chunks = list(stream_text(lively_model, tokenizer, "ROMEO:", settings(15, seed=4),
                              stop=[stop]))
    assert "".join(chunks) == full


def test_stream_without_stop_emits_every_token_as_it_comes(lively_model, tokenizer):
    chunks = list(stream_text(lively_model, tokenizer, "ROMEO:", settings(15, seed=4)))
    assert len(chunks) == 15 and all(len(c) == 1 for c in chunks)


def test_prompt_longer_than_context(lively_model, tokenizer, tiny_text, gpt_config):
    prompt = tiny_text[: 3 * gpt_config.context_length]
    text = generate_text(lively_model, tokenizer, prompt, settings(10, temperature=0))
    assert len(text) == 10


def test_cache_and_recompute_agree_beyond_the_context(lively_model, tokenizer, gpt_config):
    n = 3 * gpt_config.context_length + 5  # forces several slides of the window
    cached = generate_text(lively_model, tokenizer, "ROMEO:", settings(n, temperature=0),
                           use_cache=True)
    recomputed = generate_text(lively_model, tokenizer, "ROMEO:", settings(n, temperature=0),
                               use_cache=False)
    assert len(cached) == n
    assert len(set(cached)) > 3  # not a single repeated character
    assert cached == recomputed


def test_cache_and_recompute_agree_when_sampling(lively_model, tokenizer, gpt_config):
    n = 2 * gpt_config.context_length
    ids = [list(stream_tokens(lively_model, tokenizer.encode("J"), settings(n, seed=9),
                              use_cache=flag)) for flag in (True, False)]
    assert ids[0] == ids[1]


def test_a_draw_is_never_the_unknown_id():
    logits = torch.zeros(12)
    logits[UNKNOWN_ID] = 100.0  # overwhelmingly the most likely id
    logits[5] = 1.0
    assert Sampler(settings(temperature=0), 12).draw(logits) == 5
    assert Sampler(settings(top_k=1), 12).draw(logits) == 5
    sampler = Sampler(settings(temperature=2.0), 12)
    draws = [sampler.draw(logits) for _ in range(500)]
    assert UNKNOWN_ID not in draws
    assert len(set(draws)) > 5


def test_unknown_id_is_never_generated_by_the_model(model, tokenizer):
    with torch.no_grad():
        model.ln_f.weight.zero_()  # every logit is 0: unmasked, greedy would pick id 0
    greedy = list(stream_tokens(model, tokenizer.encode("O"), settings(5, temperature=0)))
    assert greedy == [1] * 5
    text = generate_text(model, tokenizer, "O", settings(60))
    assert len(text) == 60 and UNKNOWN_TEXT not in text


def penalised(n, frequency=0.0, presence=0.0, **rest):
    return SamplingConfig(**{"max_tokens": n, "seed": 3, "frequency_penalty": frequency,
                             "presence_penalty": presence, **rest})


def test_frequency_penalty_follows_openais_definition_over_the_generated_characters():
    """logit - frequency_penalty x count - presence_penalty x (count > 0), only for what was
    generated: a penalty-free step leaves the logits as they were (so output is unchanged)."""
    logits = torch.tensor([0.0, 3.0, 2.5, 1.0, 0.5])
    counts = torch.tensor([0.0, 2.0, 0.0, 1.0, 0.0])
    scored = sampling_logits(logits, penalised(1, 0.5, 0.25, temperature=0), counts)
    assert scored[1:].tolist() == [3.0 - 1.0 - 0.25, 2.5, 1.0 - 0.5 - 0.25, 0.5]
    assert scored[UNKNOWN_ID] == -math.inf
    assert torch.equal(sampling_logits(logits, penalised(1, temperature=0), counts)[1:],
                       logits[1:])


def test_penalties_cut_repeats_alike_with_cache_recompute_and_the_decoder(model, tokenizer):
    """Greedy text from a random model repeats one character; a frequency penalty breaks the
    loop. The KV-cache path, full recompute and the server's batched decoder agree."""
    from tinyllm.serving.batching import Decoder, Sequence

    plain = generate_text(model, tokenizer, "O", penalised(60, temperature=0))
    assert max(plain.count(c) for c in set(plain)) > 40
    settings = penalised(60, frequency=1.5, presence=0.5, temperature=0)
    text = generate_text(model, tokenizer, "O", settings)
    assert max(text.count(c) for c in set(text)) < 20
    assert text == generate_text(model, tokenizer, "O", settings, use_cache=False)
    sampled = penalised(3 * model.config.context_length, frequency=0.8, presence=-0.4)
    expected = list(stream_tokens(model, tokenizer.encode("O"), sampled))
    assert expected == list(stream_tokens(model, tokenizer.encode("O"), sampled, use_cache=False))
    got = []
    decoder = Decoder(model, max_batch=2)
    decoder.submit(Sequence(tokenizer.encode("O").tolist(), sampled, got.append))
    deadline = time.monotonic() + 60
    while not got or not isinstance(got[-1], str):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    decoder.stop()
    assert got == [*expected, "length"]

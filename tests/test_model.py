"""The GPT: shapes, tied embeddings, parameter count and KV-cache equivalence, for both blocks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tinyllm.config import ACTIVATIONS, POSITIONS
from tinyllm.model import ACTIVATIONS as MODEL_ACTIVATIONS
from tinyllm.model import GPT, GPTConfig, Rotary, rotate
from tinyllm.package import FORMAT_1_BLOCK

BLOCKS = {"gpt2": FORMAT_1_BLOCK, "default": {}}


@pytest.fixture(params=list(BLOCKS))
def any_block(request, gpt_config) -> tuple[GPT, GPTConfig]:
    """The conftest's small model with GPT-2's block and with the default block."""
    config = dataclasses.replace(gpt_config, **BLOCKS[request.param])
    torch.manual_seed(0)
    return GPT(config).eval(), config


def test_logits_and_loss_shapes(model, gpt_config):
    idx = torch.randint(0, gpt_config.vocab_size, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, gpt_config.vocab_size)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)


def test_embeddings_are_tied(model):
    assert model.lm_head.weight is model.tok_emb.weight


def test_parameter_count_matches_hand_computation(any_block):
    model, config = any_block
    v, c, d, n = config.vocab_size, config.context_length, config.d_model, config.n_layer
    per_block = 2 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d  # 2 norms, qkv, proj, MLP
    table = c * d if config.positions == "learned" else 0  # rotary positions have no weights
    expected = v * d + table + n * per_block + d  # token (+ position) embeddings, blocks, ln_f
    assert model.num_parameters() == expected == config.num_parameters()


def test_the_block_choices_params_yaml_offers_are_the_ones_the_model_builds():
    assert set(MODEL_ACTIVATIONS) == set(ACTIVATIONS)
    assert {GPT(GPTConfig(5, 4, 1, 1, 8, positions=p)).pos_emb is None for p in POSITIONS} == {
        True, False}


@pytest.mark.parametrize(("batch", "prefill"), [(1, 1), (1, 5), (2, 7)])
def test_kv_cache_matches_full_forward(any_block, batch, prefill):
    model, config = any_block
    torch.manual_seed(1)
    idx = torch.randint(1, config.vocab_size, (batch, config.context_length))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch)
        pieces = [model(idx[:, :prefill], cache=cache)[0]]
        for t in range(prefill, idx.size(1)):
            pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    incremental = torch.cat(pieces, dim=1)
    assert cache.length == config.context_length
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


def test_kv_cache_multi_token_chunks_match_full_forward(any_block):
    model, config = any_block
    idx = torch.randint(1, config.vocab_size, (1, config.context_length))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(1)
        chunks = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 4), (4, 9), (9, 16))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


def test_rotary_scores_depend_only_on_the_distance_between_positions():
    """Rotary positions are relative: a query and a key rotated to positions i and j score by
    i - j alone, so a window scores the same wherever it starts, and not as if unrotated."""
    turns = Rotary(GPTConfig(vocab_size=5, context_length=16, n_layer=1, n_head=2, d_model=16))
    qk = torch.randn(1, 6, 2, 2, 8)  # [batch, steps, q and k, heads, head_dim]

    def scores(rotated):
        return torch.einsum("bthd,bshd->bhts", rotated[:, :, 0], rotated[:, :, 1])

    early, late = (scores(rotate(qk, turns(torch.arange(s, s + 6)))) for s in (0, 9))
    torch.testing.assert_close(early, late, atol=1e-5, rtol=0)
    assert not torch.allclose(early, scores(qk), atol=1e-3)


def test_exceeding_the_context_raises(model, gpt_config):
    too_long = torch.zeros(1, gpt_config.context_length + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="context length"):
        model(too_long)


def test_exceeding_the_context_through_the_cache_raises(model, gpt_config):
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.zeros(1, gpt_config.context_length, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="context length"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_weight_decay_groups_split_matrices_from_norms(model):
    decay, no_decay = model.optimizer_groups(0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_same_seed_same_init():
    config = GPTConfig(vocab_size=11, context_length=8, n_layer=1, n_head=2, d_model=16)
    torch.manual_seed(3)
    a = GPT(config)
    torch.manual_seed(3)
    b = GPT(config)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))

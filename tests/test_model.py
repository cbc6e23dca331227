"""The GPT: shapes, tied embeddings, parameter count and KV-cache equivalence."""

from __future__ import annotations

import pytest
import torch

from tinyllm.model import GPT, GPTConfig


def test_logits_and_loss_shapes(model, gpt_config):
    idx = torch.randint(0, gpt_config.vocab_size, (3, 10))
    logits, loss = model(idx)
    assert logits.shape == (3, 10, gpt_config.vocab_size)
    assert loss is None
    _, loss = model(idx, idx)
    assert loss.shape == () and torch.isfinite(loss)


def test_embeddings_are_tied(model):
    assert model.lm_head.weight is model.tok_emb.weight


def test_parameter_count_matches_hand_computation(model, gpt_config):
    v, c, d, n = (gpt_config.vocab_size, gpt_config.context_length, gpt_config.d_model,
                  gpt_config.n_layer)
    per_block = 2 * d + 3 * d * d + d * d + 4 * d * d + 4 * d * d  # 2 norms, qkv, proj, MLP
    expected = v * d + c * d + n * per_block + d  # token + position embeddings, blocks, ln_f
    assert model.num_parameters() == expected == gpt_config.num_parameters()


@pytest.mark.parametrize(("batch", "prefill"), [(1, 1), (1, 5), (2, 7)])
def test_kv_cache_matches_full_forward(model, gpt_config, batch, prefill):
    torch.manual_seed(1)
    idx = torch.randint(1, gpt_config.vocab_size, (batch, gpt_config.context_length))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(batch)
        pieces = [model(idx[:, :prefill], cache=cache)[0]]
        for t in range(prefill, idx.size(1)):
            pieces.append(model(idx[:, t:t + 1], cache=cache)[0])
    incremental = torch.cat(pieces, dim=1)
    assert cache.length == gpt_config.context_length
    torch.testing.assert_close(incremental, full, atol=1e-5, rtol=0)


def test_kv_cache_multi_token_chunks_match_full_forward(model, gpt_config):
    idx = torch.randint(1, gpt_config.vocab_size, (1, gpt_config.context_length))
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(1)
        chunks = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 4), (4, 9), (9, 16))]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=0)


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

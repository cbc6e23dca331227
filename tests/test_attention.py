"""The playground's attention weights (tinyllm/serving/attention.py) are the model's own: each
row a distribution over the characters up to its own, and, applied to the values, they give
each block's attention output as the model computes it; for today's block and GPT-2's."""

from __future__ import annotations

import pytest
import torch
from tiny_project import OLD_BLOCK_PACKAGE

from tinyllm.model import GPT, GPTConfig
from tinyllm.package import load_package
from tinyllm.serving.attention import attention_weights


def rotary_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, context_length=16, n_layer=2, n_head=2, d_model=32)).eval()


@pytest.mark.parametrize("make", [rotary_model, lambda: load_package(OLD_BLOCK_PACKAGE).model],
                         ids=["rotary-qk-norm", "gpt2-learned"])
def test_the_weights_are_causal_distributions_that_give_each_blocks_attention(make):
    model = make()
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]
    weights = attention_weights(model, ids)
    config = model.config
    assert weights.shape == (config.n_layer, config.n_head, len(ids), len(ids))
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]), atol=1e-6)
    assert (weights.triu(1) == 0).all()  # no character looks ahead
    with torch.no_grad():
        idx = torch.tensor([ids])
        x, turns = model.embed(idx, torch.arange(len(ids)))
        for block, layer in zip(model.blocks, weights, strict=True):
            attn = block.attn
            _, _, v = attn.heads(attn.qkv(block.ln_1(x)), turns)
            mixed = (layer[None] @ v).transpose(1, 2).reshape(x.shape)
            assert torch.allclose(attn.proj(mixed), attn(block.ln_1(x), turns), atol=1e-5)
            x = block(x, turns)

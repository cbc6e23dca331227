"""Where each head looked: the attention weights of a short text, for the playground's heat maps
(`POST /v1/attention`).

The model's forward pass calls scaled_dot_product_attention, which never hands its weights out,
so they are recomputed here from the model's own public pieces (GPT.embed, each block's ln_1,
its attention's qkv and heads, and the block itself for the next layer's input): the same
queries and keys the model attends with, for either block (learned or rotary positions, with or
without QK-norm). tests/test_attention.py holds the weights to the model's own output.
"""

from __future__ import annotations

import math

import torch

from tinyllm.model import GPT


@torch.no_grad()
def attention_weights(model: GPT, ids: list[int]) -> torch.Tensor:
    """Every layer's and head's attention over ids [layers, heads, T, T]: row i is how much
    character i's query weighed each of characters 0..i (zero after i; each row sums to 1)."""
    model.eval()
    idx = torch.tensor([ids], device=model.tok_emb.weight.device)
    x, turns = model.embed(idx, torch.arange(len(ids), device=idx.device))
    future = torch.ones(len(ids), len(ids), dtype=torch.bool, device=idx.device).triu(1)
    layers = []
    for block in model.blocks:
        q, k, _ = block.attn.heads(block.attn.qkv(block.ln_1(x)), turns)
        scores = (q @ k.transpose(-2, -1)).float() / math.sqrt(q.size(-1))
        layers.append(torch.softmax(scores.masked_fill(future, -math.inf), dim=-1)[0])
        x = block(x, turns)
    return torch.stack(layers).cpu()

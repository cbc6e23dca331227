"""A decoder-only GPT for characters: pre-norm blocks, causal SDPA attention, tied embeddings.

The block is configurable, so packages trained with GPT-2's block keep loading beside the newer
one (docs/results.md, "The block" has what each component buys per step and per minute):
- positions: "learned" adds a learned table to the embeddings (GPT-2); "rotary" rotates each
  head's queries and keys by their position (RoFormer), from cos/sin tables computed once;
- qk_norm: queries and keys normalized per head before attention (QK-norm), which keeps the
  attention logits bounded;
- activation: the MLP's "gelu" (GPT-2) or "relu2", ReLU squared (Primer).

The KV cache lets generation feed one new token at a time: each layer appends that token's keys
and values (already rotated) to preallocated buffers instead of recomputing the whole window.
Its logits equal the full forward pass over the same tokens (tests hold it to 1e-5).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # params.yaml's schema, for a type hint only: this file needs only torch
    from tinyllm.config import ModelConfig

ROTARY_BASE = 10_000.0


@dataclass
class GPTConfig:
    """A model's shape and block. The defaults live in params.yaml's schema (config.ModelConfig),
    which from_params reads; the ones here are its defaults (tests/test_config.py checks)."""

    vocab_size: int
    context_length: int
    n_layer: int
    n_head: int
    d_model: int
    dropout: float = 0.0
    positions: str = "rotary"
    qk_norm: bool = True
    activation: str = "relu2"

    @classmethod
    def from_params(cls, model: ModelConfig, vocab_size: int) -> GPTConfig:
        return cls(vocab_size=vocab_size, **asdict(model))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def num_parameters(self) -> int:
        """GPT(self).num_parameters() without building it: bounds what loading may allocate."""
        d = self.d_model
        per_block = 12 * d * d + 2 * d  # qkv, proj, MLP up and down; two LayerNorm weights
        positions = self.context_length * d if self.positions == "learned" else 0
        return self.vocab_size * d + positions + self.n_layer * per_block + d


class KVCache:
    """Keys and values of every layer for the tokens fed so far, up to the context length."""

    def __init__(self, config: GPTConfig, batch_size: int, device, dtype=torch.float32):
        shape = (config.n_layer, batch_size, config.n_head, config.context_length,
                 config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this layer's new keys/values after the cached ones; return all of them."""
        end = self.length + k.size(2)
        self.keys[layer, :, :, self.length:end] = k
        self.values[layer, :, :, self.length:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


def visible_slots(positions: torch.Tensor, slots: int) -> torch.Tensor:
    """The attention mask [B, 1, 1, slots] of one new query per row at positions [B]: the cache
    slots up to each row's own position."""
    return (torch.arange(slots, device=positions.device) <= positions[:, None])[:, None, None]


def attend_one(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               visible: torch.Tensor) -> torch.Tensor:
    """Attention of one new query per row (q [B, heads, 1, head_dim]) over whole cache buffers
    [B, heads, context, head_dim], masked by visible_slots.

    Every row is computed over the same length whatever its position, so rows of different
    lengths batched together get exactly what each gets alone (serving.batching relies on it).
    """
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible)


class Rotary(nn.Module):
    """Rotary position embedding: each position's rotations as unit complex numbers, computed once
    (a buffer, not weights, so a package holds none of it) and shared by every layer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        pairs = config.head_dim // 2
        frequencies = ROTARY_BASE ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
        angles = torch.outer(torch.arange(config.context_length, dtype=torch.float64),
                             frequencies)
        self.register_buffer("turns", torch.polar(torch.ones_like(angles), angles).to(
            torch.complex64), persistent=False)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """The turns of positions [T] (or [B, T]), shaped to multiply [B, T, 2, heads, pairs]."""
        return self.turns[positions].view(*positions.shape, 1, 1, -1)


def rotate(qk: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Queries and keys [B, T, 2, heads, head_dim] with each pair of adjacent channels turned by
    its position's angle: one complex product forward and backward (on a CPU a third of the time
    of the cos/sin form's eight elementwise products)."""
    pairs = torch.view_as_complex(qk.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turns).flatten(-2).type_as(qk)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def heads(self, qkv: torch.Tensor, turns: torch.Tensor | None):
        """q, k, v [B, heads, T, head_dim] of qkv [B, T, 3 x width], the output of self.qkv:
        queries and keys normalized, and turned by rotary positions' turns (GPT.embed)."""
        batch, steps, _ = qkv.shape
        qk, v = qkv.view(batch, steps, 3, self.n_head, -1).split((2, 1), dim=2)
        if self.qk_norm:  # LayerNorm without gains, as ViT-22B's: on a CPU half RMSNorm's cost
            qk = F.layer_norm(qk, qk.shape[-1:])
        if turns is not None:
            qk = rotate(qk, turns)
        q, k = qk.unbind(2)
        return q.transpose(1, 2), k.transpose(1, 2), v.squeeze(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, turns: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0):
        batch, steps, width = x.shape
        q, k, v = self.heads(self.qkv(x), turns)
        dropout = self.dropout if self.training else 0.0
        if cache is None or cache.length == 0:
            if cache is not None:
                cache.append(layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        elif steps == 1:
            position = torch.tensor([cache.length], device=x.device)
            cache.append(layer, k, v)
            y = attend_one(q, cache.keys[layer], cache.values[layer],
                           visible_slots(position, cache.keys.size(3)))
        else:
            past = cache.length
            k, v = cache.append(layer, k, v)
            # Query i sits at absolute position past + i and may see keys 0 .. past + i.
            mask = torch.ones(steps, past + steps, dtype=torch.bool, device=x.device).tril(
                diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(batch, steps, width)
        return self.resid_dropout(self.proj(y))


class ReLU2(torch.autograd.Function):
    """ReLU squared with a backward of two products: its gradient 2 relu(x) is already zero
    where x <= 0, so no mask is kept or applied (autograd's relu().square() does both)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        positive = F.relu(x)
        ctx.save_for_backward(positive)
        return positive * positive

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (positive,) = ctx.saved_tensors
        return grad * positive * 2


def relu2(x: torch.Tensor) -> torch.Tensor:
    """ReLU squared; without a gradient to keep (generation), two plain ops: the Function's own
    Python cost made one-character generation 6% slower."""
    return ReLU2.apply(x) if x.requires_grad else F.relu(x).square()


ACTIVATIONS = {"gelu": F.gelu, "relu2": relu2}


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model, bias=False)
        self.proj = nn.Linear(4 * config.d_model, config.d_model, bias=False)
        self.activation = ACTIVATIONS[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.proj(self.activation(self.up(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=False)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=False)
        self.mlp = MLP(config)

    def forward(self, x, turns: torch.Tensor | None, cache: KVCache | None = None,
                layer: int = 0):
        x = x + self.attn(self.ln_1(x), turns, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        learned = config.positions == "learned"
        self.pos_emb = nn.Embedding(config.context_length, config.d_model) if learned else None
        self.rotary = None if learned else Rotary(config)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, bias=False)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied input/output embeddings
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        """Distinct trainable parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: torch.Tensor, positions: torch.Tensor):
        """(the embeddings of idx at positions, the turns attention gives them): learned
        positions add their table's rows; rotary positions turn queries and keys instead."""
        if self.pos_emb is not None:
            return self.tok_emb(idx) + self.pos_emb(positions), None
        return self.tok_emb(idx), self.rotary(positions)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                cache: KVCache | None = None):
        """Logits for every position of idx; with targets also the mean cross-entropy."""
        start = cache.length if cache is not None else 0
        steps = idx.size(1)
        if start + steps > self.config.context_length:
            raise ValueError(f"sequence of {start + steps} tokens exceeds the context length "
                             f"{self.config.context_length}")
        positions = torch.arange(start, start + steps, device=idx.device)
        x, turns = self.embed(idx, positions)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, turns, cache, layer)
        if cache is not None:
            cache.length += steps
        logits = self.lm_head(self.ln_f(x))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def new_cache(self, batch_size: int = 1) -> KVCache:
        p = self.tok_emb.weight
        return KVCache(self.config, batch_size, p.device, p.dtype)

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on matrices (embeddings, linear weights) only, not on norms."""
        params = list(self.parameters())
        return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6 x matmul params plus attention (PaLM appendix B)."""
        c = self.config
        table = self.pos_emb.weight.numel() if self.pos_emb is not None else 0
        matmul_params = self.num_parameters() - table
        return 6 * matmul_params + 12 * c.n_layer * c.d_model * c.context_length


def compiled(model: GPT, dynamic: bool | None = None) -> GPT:
    """torch.compile, without Inductor's advice to enable TF32 on GPUs: fp32 matmuls stay exact
    (training already runs its matmuls in bf16 there)."""
    warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores")
    return torch.compile(model, dynamic=dynamic)

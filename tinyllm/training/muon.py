"""Muon for the blocks' weight matrices and Adam for the rest, as one optimizer (train.optimizer).

Muon (Jordan et al., 2024) replaces each matrix's momentum by its nearest semi-orthogonal matrix,
found by a few Newton-Schulz iterations; the embeddings and the norms' gains keep Adam with
decoupled weight decay. On a CPU, in the same training time, it reaches a lower test loss than
AdamW despite its dearer steps (docs/results.md, "Test loss by training budget").

torch.optim.Muon iterates in bfloat16, which CPUs without native bfloat16 (AVX2) emulate: about
1 s a step for the 4-layer model. Here the iteration runs in float32, over all same-shaped matrices
at once. The learning rate is shared with Adam: each matrix's update is scaled to the RMS of an
Adam update (0.2 * sqrt(max(rows, columns)), torch's "match_rms_adamw"), so one
train.learning_rate serves both.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # for a type hint only: the optimizer needs only torch
    from tinyllm.model import GPT

# The quintic iteration's coefficients and step count from Muon's reference implementation.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
MOMENTUM = 0.95
ADAM_EPS = 1e-8


def orthogonalized(g: torch.Tensor) -> torch.Tensor:
    """Approximately U V^T for each matrix U S V^T in the stack g ([n, rows, columns])."""
    a, b, c = NS_COEFFICIENTS
    tall = g.size(-2) > g.size(-1)
    x = g.mT if tall else g
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=1e-7)
    for _ in range(NS_STEPS):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


def muon_groups(model: GPT, weight_decay: float) -> list[dict]:
    """model.optimizer_groups with the blocks' matrices split off for Muon; the embeddings
    (decayed) and the norms' gains stay with Adam."""
    decayed, *rest = model.optimizer_groups(weight_decay)
    in_blocks = {id(p) for name, p in model.named_parameters() if name.startswith("blocks.")}
    return [{**decayed, "params": [p for p in decayed["params"] if id(p) in in_blocks],
             "muon": True},
            {**decayed, "params": [p for p in decayed["params"] if id(p) not in in_blocks]},
            *rest]


class Muon(torch.optim.Optimizer):
    """Param groups with "muon": True take Muon (2-D parameters only), the others Adam."""

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float]):
        super().__init__(groups, {"lr": lr, "betas": betas, "weight_decay": 0.0, "muon": False})

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                p.mul_(1 - group["lr"] * group["weight_decay"])
            (self._muon if group["muon"] else self._adam)(group, params)

    def _muon(self, group: dict, params: list[torch.Tensor]) -> None:
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in params:
            by_shape.setdefault(p.shape, []).append(p)
        for shape, same in by_shape.items():
            updates = []
            for p in same:
                momentum = self.state[p].setdefault("momentum", torch.zeros_like(p))
                momentum.lerp_(p.grad, 1 - MOMENTUM)
                updates.append(p.grad.lerp(momentum, MOMENTUM))  # Nesterov
            scale = group["lr"] * 0.2 * math.sqrt(max(shape))
            for p, update in zip(same, orthogonalized(torch.stack(updates)).unbind(), strict=True):
                p.add_(update, alpha=-scale)

    def _adam(self, group: dict, params: list[torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        for p in params:
            state = self.state[p]
            if not state:
                state.update(step=0, mean=torch.zeros_like(p), square=torch.zeros_like(p))
            state["step"] += 1
            state["mean"].lerp_(p.grad, 1 - beta1)
            state["square"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["square"] / (1 - beta2 ** state["step"])).sqrt_().add_(ADAM_EPS)
            p.addcdiv_(state["mean"], denom, value=-group["lr"] / (1 - beta1 ** state["step"]))

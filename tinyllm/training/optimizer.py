"""The optimizer of train.optimizer and one step of it: gradient accumulation, clipping, the
learning rate of the plan."""

from __future__ import annotations

import math

import torch

from tinyllm.config import TrainConfig
from tinyllm.model import GPT
from tinyllm.training import distributed
from tinyllm.training.batches import WindowSampler
from tinyllm.training.muon import Muon, muon_groups


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer: Muon (muon.py), or AdamW fused on CUDA and CPU: one pass over the
    parameters instead of a dozen (on CPU, 0.8 ms a step instead of 5 for the default model)."""
    if cfg.optimizer == "muon":
        return Muon(muon_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                    betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2),
                             fused=device.type in ("cuda", "cpu") or None)


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
    """The decayed groups' weight decay (the norms' gains stay undecayed)."""
    for group in optimizer.param_groups:
        if group["weight_decay"]:
            group["weight_decay"] = weight_decay


def optimizer_step(net: torch.nn.Module, model: GPT, optimizer: torch.optim.Optimizer,
                   sampler: WindowSampler, cfg: TrainConfig, lr: float, device: torch.device,
                   autocast) -> tuple[float, torch.Tensor]:
    """One step: accumulate cfg.grad_accum_steps micro-batches, clip, the optimizer's step.

    Returns this rank's mean micro-batch loss and the gradient norm before clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for micro in range(cfg.grad_accum_steps):
        inputs, targets = (t.to(device) for t in sampler.next())
        with distributed.sync_gradients(net, micro == cfg.grad_accum_steps - 1):
            with autocast():
                _, loss = net(inputs, targets)
            (loss / cfg.grad_accum_steps).backward()
        losses.append(loss.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(torch.stack(losses).mean()), grad_norm

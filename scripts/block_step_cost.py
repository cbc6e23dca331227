"""What each block component costs a training step, side by side in one process.

    python scripts/block_step_cost.py                               # context 64, batch 16
    python scripts/block_step_cost.py --context-length 128 --batch-size 32

GPT-2's block, then rotary positions, QK-norm and ReLU² added one by one (params.yaml's
model.positions, model.qk_norm, model.activation): each variant takes --steps steps (forward,
backward, clipping, the optimizer) in turn, for --rounds rounds, on one thread. Thread CPU time,
so other load on the machine moves the figures little. Prints each variant's median step and its
ratio to GPT-2's block (docs/results.md, "The block").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tinyllm.config import TrainConfig
from tinyllm.model import GPT, GPTConfig
from tinyllm.package import FORMAT_1_BLOCK
from tinyllm.training.optimizer import make_optimizer

LADDER = {
    "GPT-2's block": FORMAT_1_BLOCK,
    "+ rotary positions": {**FORMAT_1_BLOCK, "positions": "rotary"},
    "+ QK-norm": {**FORMAT_1_BLOCK, "positions": "rotary", "qk_norm": True},
    "+ ReLU² (the new block)": {"positions": "rotary", "qk_norm": True, "activation": "relu2"},
}


def step_seconds(model: GPT, optimizer: torch.optim.Optimizer, batch: torch.Tensor,
                 steps: int) -> list[float]:
    """The thread time of each of `steps` training steps of model on batch."""
    times = []
    for _ in range(steps):
        started = time.thread_time()
        _, loss = model(batch, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.thread_time() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="steps a variant takes per round")
    parser.add_argument("--rounds", type=int, default=12, help="rounds; the first two warm up")
    args = parser.parse_args()
    torch.set_num_threads(1)
    batch = torch.randint(0, 85, (args.batch_size, args.context_length))
    models = {}
    for name, block in LADDER.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=85, context_length=args.context_length,
                              n_layer=args.layers, n_head=args.heads, d_model=args.width,
                              **block))
        models[name] = model, make_optimizer(model, TrainConfig(), torch.device("cpu"))
    times: dict[str, list[float]] = {name: [] for name in LADDER}
    for round_ in range(args.rounds):
        for name, (model, optimizer) in models.items():
            measured = step_seconds(model, optimizer, batch, args.steps)
            if round_ >= min(2, args.rounds - 1):
                times[name] += measured
    base = statistics.median(times["GPT-2's block"])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"| {name} | {median * 1e3:.1f} ms | {median / base:.3f} |")


if __name__ == "__main__":
    main()

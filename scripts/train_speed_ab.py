"""Training-step throughput of this checkout against another, side by side in one run.

    git worktree add /tmp/baseline main
    python scripts/train_speed_ab.py --baseline /tmp/baseline --context-length 64 --batch-size 12

Each probe is a fresh process that runs `step_rate` below with the tinyllm of one checkout (any
from 2026-12-04 on, when the loop moved to tinyllm/training/): the real training loop, sampling,
clipping and AdamW (the optimizer every such checkout has) included, for --steps steps on random
tokens. The two checkouts take turns (A B A B ...), so drift in the machine's speed hits both.
Prints each pair's ratio and the median ratio (this checkout / baseline), with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

SHAPE = ("context_length", "batch_size", "layers", "heads", "width")


def step_rate(context_length: int, batch_size: int, layers: int, heads: int, width: int,
              steps: int) -> float:
    """Median tokens/s of a training step, the first fifth of the steps (warming up) left out,
    trained by whichever tinyllm this process imports."""
    import numpy as np

    from tinyllm.config import TrainConfig
    from tinyllm.model import GPTConfig
    from tinyllm.training.loop import fit

    tokens = np.random.default_rng(0).integers(1, 85, 500_000).astype(np.uint16)
    cfg = TrainConfig(max_steps=steps, batch_size=batch_size, warmup_steps=5, optimizer="adamw",
                      eval_interval=10**6, eval_batches=1, checkpoint_interval=10**6,
                      device="cpu")
    model = GPTConfig(vocab_size=85, context_length=context_length, n_layer=layers,
                      n_head=heads, d_model=width)
    rates: list[float] = []
    fit(model, cfg, tokens, tokens, callbacks=[lambda m: rates.append(m.tokens_per_sec)])
    return statistics.median(rates[steps // 5:])


def probe(source: Path, args) -> float:
    """step_rate in a fresh process that imports tinyllm from the checkout at source."""
    shape = [str(getattr(args, name)) for name in (*SHAPE, "steps")]
    out = subprocess.run([sys.executable, __file__, "--probe", *shape], cwd=source,
                         env={**os.environ, "PYTHONPATH": str(source)}, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout's root")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100, help="steps a probe trains")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    load = os.getloadavg()[0]
    ratios = []
    for pair in range(args.pairs):
        ours, theirs = probe(here, args), probe(args.baseline.resolve(), args)
        ratios.append(ours / theirs)
        print(f"pair {pair + 1}: {ours:,.0f} vs {theirs:,.0f} tokens/s = {ratios[-1]:.2f}x",
              file=sys.stderr, flush=True)
    print(json.dumps({"shape": {k: getattr(args, k) for k in SHAPE},
                      "ratios": [round(r, 3) for r in ratios],
                      "median_ratio": round(statistics.median(ratios), 3),
                      "load_before": load, "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:  # one probe process (see probe): the shape, then the steps
        print(json.dumps(step_rate(*map(int, sys.argv[2:]))))
    else:
        main()

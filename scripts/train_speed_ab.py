"""Training-step throughput of this checkout against another, side by side in one run.

    git worktree add /tmp/baseline 9030ad5
    python scripts/train_speed_ab.py --baseline /tmp/baseline --context-length 64 --batch-size 12

Each probe is a fresh process that runs the real training loop (`tinyllm.training.loop.fit`,
sampling, clipping and AdamW included, whatever train.optimizer defaults to) for --steps steps
on random tokens and reports its median step tokens/s; the two source trees take turns
(A B A B ...), so drift in the machine's speed hits both. Prints each pair's ratio and the
median ratio (this checkout / baseline), with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, statistics, sys
import numpy as np
from tinyllm.config import TrainConfig
from tinyllm.model import GPTConfig
try:
    from tinyllm.training import loop
except ImportError:  # tinyllm/train.py before 2026-12-04
    from tinyllm import train as loop

context, batch, steps, layers, heads, width = map(int, sys.argv[1:7])
tokens = np.random.default_rng(0).integers(1, 85, 500_000).astype(np.uint16)
cfg = TrainConfig(max_steps=steps, batch_size=batch, warmup_steps=5, eval_interval=10**6,
                  eval_batches=1, checkpoint_interval=10**6, device="cpu")
if hasattr(cfg, "optimizer"):  # AdamW, the optimizer every checkout has (Muon came later)
    cfg.optimizer = "adamw"
model = GPTConfig(vocab_size=85, context_length=context, n_layer=layers, n_head=heads,
                  d_model=width)
rates = []
fit = getattr(loop, 'fit', None) or loop.train  # named train before 2026-11-27
fit(model, cfg, tokens, tokens, callbacks=[lambda m: rates.append(m.tokens_per_sec)])
print(json.dumps(statistics.median(rates[steps // 5:])))
"""


def probe(source: Path, args) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    shape = [args.context_length, args.batch_size, args.steps, args.layers, args.heads, args.width]
    out = subprocess.run([sys.executable, "-c", PROBE, *map(str, shape)], env=env, cwd=source,
                         capture_output=True, text=True, check=True)
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
    print(json.dumps({"shape": {k: getattr(args, k) for k in (
        "context_length", "batch_size", "layers", "heads", "width")},
        "ratios": [round(r, 3) for r in ratios], "median_ratio": round(statistics.median(ratios),
                                                                       3),
        "load_before": load, "load_after": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()

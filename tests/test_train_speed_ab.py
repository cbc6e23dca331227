"""scripts/train_speed_ab.py: each probe trains with its own checkout's tinyllm.

The baseline here is a stand-in checkout whose training loop reports a fixed rate, so the test
sees that the baseline's code (not this checkout's, installed in the environment) ran, while
this checkout's probe runs the real loop."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_speed_ab.py"
LOOP = """from types import SimpleNamespace


def fit(model, cfg, train_tokens, val_tokens, callbacks):
    for _ in range(cfg["max_steps"]):
        for callback in callbacks:
            callback(SimpleNamespace(tokens_per_sec=1234.0))
"""


def stand_in_checkout(root: Path) -> Path:
    """A checkout whose tinyllm has the names step_rate imports, training at 1234 tokens/s."""
    (root / "tinyllm" / "training").mkdir(parents=True)
    for init in ("tinyllm/__init__.py", "tinyllm/training/__init__.py"):
        (root / init).write_text("")
    (root / "tinyllm" / "config.py").write_text("def TrainConfig(**values):\n    return values\n")
    (root / "tinyllm" / "model.py").write_text("def GPTConfig(**values):\n    return values\n")
    (root / "tinyllm" / "training" / "loop.py").write_text(LOOP)
    return root


def test_each_probe_trains_with_its_own_checkout(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--baseline", str(stand_in_checkout(tmp_path)),
         "--context-length", "8", "--batch-size", "2", "--layers", "1", "--heads", "1",
         "--width", "8", "--steps", "6", "--pairs", "1"],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ours = float(done.stderr.split("pair 1: ")[1].split(" vs ")[0].replace(",", ""))
    assert " vs 1,234 tokens/s = " in done.stderr and ours > 0  # this checkout really trained
    result = json.loads(done.stdout)
    assert result["shape"] == {"context_length": 8, "batch_size": 2, "layers": 1, "heads": 1,
                               "width": 8}
    assert result["ratios"] == [result["median_ratio"]]
    assert abs(result["median_ratio"] - ours / 1234) < 1e-3  # ours is printed rounded

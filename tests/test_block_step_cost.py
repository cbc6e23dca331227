"""scripts/block_step_cost.py runs the block ladder and prints each variant against GPT-2's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "block_step_cost.py"


def test_the_step_cost_script_times_each_component_against_gpt2s_block():
    done = subprocess.run([sys.executable, SCRIPT, "--context-length", "8", "--batch-size", "2",
                           "--width", "16", "--layers", "1", "--heads", "2", "--steps", "1",
                           "--rounds", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [line.strip("| ").split(" | ") for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == ["GPT-2's block", "+ rotary positions", "+ QK-norm",
                                        "+ ReLU² (the new block)"]
    assert rows[0][2] == "1.000" and all(float(row[2]) > 0 for row in rows)

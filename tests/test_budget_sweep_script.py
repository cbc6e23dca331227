"""scripts/budget_sweep.py refuses a bad --slowdown in one line, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "budget_sweep.py"


@pytest.mark.parametrize("value", ["0", "-2", "nan", "inf", "0.5"])
def test_a_slowdown_below_one_or_not_finite_is_one_error_line(value, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--slowdown", value, "--work",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"budget_sweep.py: error: argument --slowdown: must be a number >= 1, got {value}")
    assert not any(tmp_path.iterdir())  # nothing prepared or trained

"""scripts/budget_sweep.py refuses bad input in one line, before any work."""

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


@pytest.mark.parametrize(("args", "error"), [
    (["--budgets", "0"], "argument --budgets: must be a number > 0, got 0"),
    (["--tokens-per-sec", "nan"], "argument --tokens-per-sec: must be a number > 0, got nan"),
])
def test_budgets_and_rates_must_be_positive_and_finite(args, error, tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), *args, "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"budget_sweep.py: error: {error}"
    assert not any(tmp_path.iterdir())


def test_a_missing_params_file_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--params", str(tmp_path / "nope.yaml"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: params file not found: {tmp_path / 'nope.yaml'}"
    assert not (tmp_path / "work").exists()

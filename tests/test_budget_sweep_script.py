"""scripts/budget_sweep.py refuses bad input in one line, before any work."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm.config import params_from_dict

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


@pytest.mark.parametrize(("seed", "error"), [
    ("-5", "train.seed must be >= 0, got -5"),
    (str(2**64), f"train.seed must be <= {2**63 - 1}, got {2**64}"),
])
def test_a_refused_seed_is_one_error_line_before_any_work(seed, error, tmp_path):
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(SCRIPT), f"--seeds={seed}", "--work", str(work)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"error: {error}"
    assert not work.exists()  # no corpus prepared


def test_a_missing_params_file_is_one_error_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--params", str(tmp_path / "nope.yaml"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: params file not found: {tmp_path / 'nope.yaml'}"
    assert not (tmp_path / "work").exists()


def test_a_paced_slowdown_keeps_the_quiet_plan_and_runs_that_many_times_slower():
    """--tokens-per-sec with --slowdown: the calibration's plan is the quiet machine's, and its
    clock then advances FACTOR times as far for each step and evaluation."""
    spec = importlib.util.spec_from_file_location("budget_sweep", SCRIPT)
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    params = params_from_dict({"train": {"time_budget_minutes": 2}})
    quiet, slowed = (sweep.PacedClock(params, 20000, 10**6, factor) for factor in (1, 2))
    assert slowed.plan == quiet.plan
    assert quiet() == slowed() == 0  # each run's first reading, its start
    start = quiet.now
    step, evaluation = (type("Metrics", (), {"val_loss": v}) for v in (None, 1.0))
    for metrics in (step, step, evaluation):
        quiet(metrics), slowed(metrics)
    assert quiet.now - start > 0
    assert slowed.now - start == pytest.approx(2 * (quiet.now - start))

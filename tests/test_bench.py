"""`python -m tinyllm.bench --quick`: it runs end to end and reports every figure (no timings
are asserted: the machine is shared)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tinyllm


def test_quick_bench_reports_positive_figures_and_identical_greedy_text(tmp_path):
    """Run as from a source tree: a Python with the dependencies but without tinyllm installed
    (no `tinyllm` command beside it or on PATH), the checkout on PYTHONPATH."""
    out = tmp_path / "bench.json"
    bare = tmp_path / "venv"  # a venv of this one's Python, with nothing installed in it
    (bare / "bin").mkdir(parents=True)
    (bare / "bin" / "python").symlink_to(sys.executable)
    shutil.copy(Path(sys.prefix) / "pyvenv.cfg", bare / "pyvenv.cfg")
    checkout, dependencies = (Path(m.__file__).parent.parent for m in (tinyllm, torch))
    env = {**os.environ, "PATH": "/usr/bin:/bin",
           "PYTHONPATH": os.pathsep.join(map(str, (checkout, dependencies)))}
    done = subprocess.run([str(bare / "bin" / "python"), "-m", "tinyllm.bench", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert "tokens/s" in done.stderr  # the table for a person

    assert report["machine"]["device"] == "cpu" and report["machine"]["threads"] > 0
    assert report["matmul"]["flops_per_sec"] > 0
    for optimizer in ("eager", "muon"):  # AdamW and Muon
        for key in ("tokens_per_sec", "flops_per_sec", "matmul_fraction"):
            assert report["training"][optimizer][key] > 0, (optimizer, key)
    assert "Muon / AdamW" in done.stderr
    assert report["training"]["flops_per_token"] > 0
    assert "compiled" not in report["training"]  # only with --compile
    runs = report["generation"]["contexts"]
    assert len(runs) == 2
    for run in runs:
        assert run["kv_cache_tokens_per_sec"] > 0 and run["recompute_tokens_per_sec"] > 0
        assert run["identical"] is True, run
        assert run["distinct_tokens"] > 1  # varied text, so the comparison means something
    assert report["first_character"]["seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_device_is_one_error_line():
    done = subprocess.run([sys.executable, "-m", "tinyllm.bench", "--device", "cuda"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr == "error: --device is 'cuda' but no CUDA device is available\n"
    assert done.stdout == ""

"""`python -m tinyllm.bench --quick`: it runs end to end and reports every figure (no timings
are asserted: the machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch


def test_quick_bench_reports_positive_figures_and_identical_greedy_text(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "tinyllm.bench", "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
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

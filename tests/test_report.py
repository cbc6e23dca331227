"""The loss-curve image's minutes axis: each step's time from its tokens/s, summed."""

from __future__ import annotations

import json

import pytest

from tinyllm.evaluation.report import loss_curve_png, step_minutes


def test_minutes_add_up_each_steps_time(tmp_path):
    (tmp_path / "steps.csv").write_text(
        "step,train_loss,lr,grad_norm,tokens_per_sec\n"
        "1,4.0,0.1,1.0,600\n2,3.0,0.1,1.0,300\n3,2.0,0.1,1.0,600\n")
    (tmp_path / "eval.csv").write_text("step,val_loss\n3,2.5\n")
    (tmp_path / "summary.json").write_text(json.dumps({"tokens_seen": 1800, "steps": 3}))
    assert step_minutes(tmp_path) == pytest.approx({1: 1 / 60, 2: 3 / 60, 3: 4 / 60})
    out = loss_curve_png(tmp_path, tmp_path / "curve.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

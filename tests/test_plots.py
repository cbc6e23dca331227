"""dvc.yaml's plots: titled axes and one colour per curve (train, validation) as DVC draws them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def curves() -> dict[str, dict]:
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["plots"]
    return {name: spec for plot in plots if isinstance(plot, dict) for name, spec in plot.items()}


def test_every_curve_names_its_axes_and_uses_the_series_template():
    assert set(curves()) == {"loss", "learning_rate", "throughput"}
    for name, spec in curves().items():
        assert spec["x_label"] and spec["y_label"] not in (None, "", "y"), name
        assert spec["template"] == "series", name
    assert curves()["loss"]["y_label"] == "loss (nats/char)"


def test_dvc_renders_train_and_validation_loss_in_two_colours():
    """On the committed curves (models/train/*.csv are kept in git)."""
    shown = subprocess.run([DVC, "plots", "show", "--json", "loss"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    [plot] = json.loads(shown.stdout)["data"]["loss"]
    encoding = plot["content"]["encoding"]
    assert encoding["y"]["title"] == "loss (nats/char)" and encoding["x"]["title"] == "step"
    colour = encoding["color"]["field"]
    assert {row[colour] for row in plot["content"]["data"]["values"]} == {"train_loss",
                                                                          "val_loss"}

"""What a training run's MLflow record holds besides params and curves: system metrics sampled
while it ran, the prepared data it trained on as dataset inputs, and samples by step."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import mlflow

from tinyllm import workflow
from tinyllm.tracking.runs import TRAINING_SAMPLES
from tinyllm.tracking.store import Store


def test_a_training_run_records_system_metrics_and_its_datasets(tmp_path, make_params,
                                                               monkeypatch, new_store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", new_store(tmp_path))
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")  # 10 s by default
    params = make_params(**{"train.max_steps": 100, "train.eval_interval": 50,
                            "train.checkpoint_interval": 100})
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.train)
    assert not any(t.name == "SystemMetricsMonitor" for t in threading.enumerate())

    store = Store()
    [run] = store.client.search_runs([store.experiment_id("tests")])
    assert {"system/cpu_utilization_percentage",
            "system/system_memory_usage_megabytes"} <= set(run.data.metrics)

    found = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(found) == {"train", "validation"}
    for context, split in (("train", "train"), ("validation", "val")):
        path = layout.prepared / f"{split}.txt"
        text = path.read_text(encoding="utf-8")
        assert found[context].name == f"corpus-{context}"  # the corpus directory's name
        assert found[context].digest == hashlib.sha256(text.encode()).hexdigest()[:16]
        assert json.loads(found[context].source) == {"uri": str(path)}
        assert json.loads(found[context].profile) == {"characters": len(text)}

    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=TRAINING_SAMPLES,
        dst_path=str(tmp_path / "download"), tracking_uri=store.uri)
    table = json.loads(Path(local).read_text())
    assert table["columns"] == ["step", "prompt", "text"]
    assert [row[:2] for row in table["data"]] == [[50, "ROMEO:"], [100, "ROMEO:"]]
    on_disk = (layout.train_dir / "samples.md").read_text()
    assert all(f"ROMEO:{text}" in on_disk for _, _, text in table["data"])
    assert [a.path for a in store.client.list_artifacts(run.info.run_id, "train")] == [
        "train/samples.md", "train/summary.json"]
    summary = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="train/summary.json",
        dst_path=str(tmp_path / "download"), tracking_uri=store.uri)).read_text())
    assert summary == json.loads((layout.train_dir / "summary.json").read_text())
    assert summary["plan_segments"] == [[summary["planned_warmup_steps"], 0.0, 100]]

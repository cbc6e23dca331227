"""MLflow tracking and registry against a real sqlite store in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_project import ROOT, make_project

import tinyllm
from tinyllm import workflow
from tinyllm.errors import TinyLLMError
from tinyllm.tracking.registry import resolve_model_uri
from tinyllm.tracking.runs import STEP_METRICS, VAL_LOSS
from tinyllm.tracking.store import Store, rehome_artifacts, runs_page, ui_page


@pytest.fixture
def store_uri(tmp_path, monkeypatch, new_store):
    uri = new_store(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def build(params, root):
    """Run all four steps into root, as `dvc repro` would; returns evaluate's metrics."""
    return workflow.build(params, workflow.Layout(root))


def test_run_logs_params_step_metrics_artifacts_and_registers(tmp_path, make_params, store_uri):
    params = make_params()
    metrics = build(params, tmp_path / "a")
    store = Store()
    run_id = (tmp_path / "a/models/train/mlflow_run.json").read_text()
    run = store.client.search_runs([store.experiment_id("tests")])[0]
    assert run.info.run_id in run_id
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"]
    assert run.data.params["train.learning_rate"] == "0.003"
    assert run.data.params["model.d_model"] == "32"
    assert int(run.data.params["derived.parameters"]) > 1000
    assert "derived.data_fingerprint" in run.data.params
    history = store.client.get_metric_history(run.info.run_id, STEP_METRICS["train_loss"])
    assert sorted(m.step for m in history) == list(range(1, 31))
    assert len(store.client.get_metric_history(run.info.run_id, VAL_LOSS)) == 3
    assert run.data.metrics["eval_test_loss"] == pytest.approx(metrics["test"]["loss"])
    assert {"eval_test_bits_per_char", "eval_test_perplexity", "eval_val_loss"} <= set(
        run.data.metrics)
    # Charts are the curves and the evaluation's scores; training's single values are tags.
    assert {k for k in run.data.metrics if not k.startswith(("eval_", "system/"))} == set(
        STEP_METRICS.values())
    assert run.data.tags["tinyllm.steps"] == "30"
    assert run.data.tags["tinyllm.stopped_by"] == "max_steps"
    artifacts = {a.path for folder in ("data", "eval")
                 for a in store.client.list_artifacts(run.info.run_id, folder)}
    assert {"data/tokenizer.json", "eval/samples.md", "eval/loss_curve.png"} <= artifacts
    version = store.client.get_model_version("tiny", "1")
    assert version.tags["run_id"] == run.info.run_id
    [logged] = store.client.search_logged_models([store.experiment_id("tests")])
    assert logged.source_run_id == run.info.run_id and logged.status == "READY"
    assert logged.tags["mlflow.source.name"]  # the UI's "Logged from"
    assert logged.params["train.learning_rate"] == "0.003"
    assert float(version.tags["test_bits_per_char"]) == pytest.approx(
        metrics["test"]["bits_per_char"], rel=1e-5)
    assert str(store.client.get_model_version_by_alias("tiny", "champion").version) == "1"
    # artifacts live beside mlflow.db, where `mlflow ui` in that directory finds them
    assert any((tmp_path / "mlruns").rglob("weights.pt"))


def test_experiments_open_on_their_runs_in_mlflow_ui_also_those_made_before(store_uri):
    """MLflow 3's UI opens an experiment without this tag on its GenAI traces overview."""
    store = Store()
    older = store.client.create_experiment("older")
    for name in ("older", "new"):
        experiment = store.client.get_experiment(store.experiment_id(name))
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert store.experiment_id("older") == older


def test_every_page_tinyllm_links_to_asks_mlflow_ui_for_the_model_training_layout(store_uri):
    """MLflow 3.17's UI reads the layout from the address (or the browser's last switch), not
    from the experiment's tag: a run or model page opened without it shows the GenAI layout."""
    store = Store()
    runs = runs_page(store, "new")
    model = ui_page(store, "models/tiny/versions/1")
    assert f"#/experiments/{store.experiment_id('new')}?workflowType=machine_learning " in runs
    assert model.startswith("http://127.0.0.1:5000/#/models/tiny/versions/1?workflowType="
                            "machine_learning (after `mlflow ui` in the project root)")


def test_a_copied_project_refuses_to_log_into_the_originals_store_until_rehomed(
        tmp_path, make_params, monkeypatch, new_store):
    """mlflow.db holds absolute artifact paths: a copy would write into the original's mlruns/."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original, copy = tmp_path / "original", tmp_path / "copy"
    new_store(original)
    monkeypatch.chdir(original)  # the store is the project's: ./mlflow.db, ./mlruns
    params = make_params()
    build(params, original)
    shutil.copytree(original, copy)
    written = sorted((original / "mlruns").rglob("*"))
    monkeypatch.chdir(copy)
    message = (rf"MLflow (experiment 'tests'|run \w+) in sqlite:///{copy}/mlflow.db keeps its "
               rf"artifacts in {original}/mlruns\S*, outside {copy}: this project was copied or "
               rf"moved; run `tinyllm rehome` in {copy} to point mlflow.db at {copy}/mlruns")
    for step in (workflow.train, workflow.evaluate):
        with pytest.raises(TinyLLMError, match=message):
            step(params, workflow.Layout(copy))
    assert sorted((original / "mlruns").rglob("*")) == written
    rehome_artifacts(Store())  # what the message says to run
    workflow.evaluate(params, workflow.Layout(copy))  # logs and registers into the copy
    assert sorted((original / "mlruns").rglob("*")) == written
    assert len(list((copy / "mlruns").rglob("*"))) > len(written)  # the evaluation run's files


def test_champion_moves_only_for_better_models_and_same_weights_do_not_duplicate(
        tmp_path, make_params, store_uri):
    build(make_params(), tmp_path / "first")
    build(make_params(**{"evaluate.temperature": 0.5}), tmp_path / "first")  # same weights
    store = Store()
    assert [str(v.version) for v in store.client.search_model_versions("name='tiny'")] == ["1"]
    build(make_params(**{"train.max_steps": 120}), tmp_path / "better")
    assert str(store.client.get_model_version_by_alias("tiny", "champion").version) == "2"
    build(make_params(**{"train.max_steps": 6}), tmp_path / "worse")
    assert len(store.client.search_model_versions("name='tiny'")) == 3
    assert str(store.client.get_model_version_by_alias("tiny", "champion").version) == "2"


def test_every_uri_form_resolves_and_unknown_ones_list_what_exists(
        tmp_path, make_params, store_uri):
    build(make_params(), tmp_path / "a")
    store = Store()
    run_id = store.client.get_model_version("tiny", "1").run_id
    texts = set()
    for uri in ("models:/tiny/1", "models:/tiny@champion", "models:/tiny/latest",
                f"runs:/{run_id}/model", str(tmp_path / "a/models/model")):
        loaded = tinyllm.load_model(uri, tracking_uri=store.uri)
        texts.add(loaded.generate("ROMEO:", max_tokens=12, temperature=0))
    assert len(texts) == 1  # the same weights behind every form
    with pytest.raises(TinyLLMError, match=r"no registered model named 'nope'.*tiny"):
        resolve_model_uri("models:/nope/1", store)
    with pytest.raises(TinyLLMError, match=r"no version '9'.*versions: 1"):
        resolve_model_uri("models:/tiny/9", store)
    with pytest.raises(TinyLLMError, match=r"no alias 'gold'.*champion"):
        resolve_model_uri("models:/tiny@gold", store)
    with pytest.raises(TinyLLMError, match="outside"):
        resolve_model_uri(f"runs:/{run_id}/../../etc", store)
    with pytest.raises(TinyLLMError, match="malformed"):
        resolve_model_uri("models:/tiny/1/extra", store)


def test_evaluate_starts_a_fresh_run_when_trains_run_is_gone(tmp_path, make_params, store_uri):
    params = make_params()
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.train)
    store = Store()
    old = store.client.search_runs([store.experiment_id("tests")])[0].info.run_id
    store.client.delete_run(old)
    workflow.evaluate(params, layout)
    runs = store.client.search_runs([store.experiment_id("tests")])
    assert [r.info.run_id != old for r in runs] == [True]
    assert "eval_test_loss" in runs[0].data.metrics


def test_tracking_can_be_switched_off(tmp_path, make_params, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    build(make_params(**{"tracking.enabled": False}), tmp_path)
    assert not (tmp_path / "mlflow.db").exists()


def test_with_tracking_off_train_and_evaluate_never_import_mlflow(tmp_path, corpus_dir):
    """Off means off: an offline run does not pay for MLflow's import, seconds per stage."""
    layout = make_project(tmp_path / "project", corpus_dir)
    code = ("import sys\nfrom tinyllm import workflow\n"
            "workflow.run_stage(workflow.train)\nworkflow.run_stage(workflow.evaluate)\n"
            "print('MLFLOW', 'mlflow' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=layout.root, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (layout.eval_dir / "metrics.json").exists()
    assert done.stdout.splitlines()[-1] == "MLFLOW False"


def test_unreachable_server_is_named_before_any_training(tmp_path, make_params, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    params = make_params()
    layout = workflow.Layout(tmp_path)
    workflow.build(params, layout, through=workflow.tokenize)
    with pytest.raises(TinyLLMError, match=r"http://127\.0\.0\.1:9 is unreachable"):
        workflow.train(params, layout)
    assert not layout.checkpoints.exists()


def test_two_stores_in_one_process_each_keep_their_own_runs_and_models(tmp_path, make_params,
                                                                        monkeypatch, new_store):
    """Nothing goes through MLflow's process-global URI or active run: a model registers in the
    store its run belongs to, whichever store was opened last, from any working directory."""
    import mlflow

    from tinyllm.tracking.runs import TrackedRun

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = make_params(**{"tracking.enabled": False})
    layout = workflow.Layout(tmp_path / "model")
    workflow.build(params, layout, through=workflow.train)
    first, second = (Store(new_store(tmp_path / name)) for name in ("one", "two"))
    monkeypatch.chdir(tmp_path / "model")  # neither store's directory
    global_uri = mlflow.get_tracking_uri()  # MLflow's default: a store in the cwd
    with TrackedRun.start(first, "tests", "run-one", {}, {}) as run:
        assert run.register(layout.model, "only-in-one", 2.0, 3.0, "data").version == "1"
    assert [m.name for m in first.client.search_registered_models()] == ["only-in-one"]
    assert second.client.search_registered_models() == []
    assert resolve_model_uri("models:/only-in-one/1", first).path.is_dir()
    assert mlflow.get_tracking_uri() == global_uri and "MLFLOW_TRACKING_URI" not in os.environ
    assert not (tmp_path / "model/mlflow.db").exists() and not (tmp_path / "model/mlruns").exists()


def test_a_run_whose_process_was_killed_ends_killed_when_the_next_run_opens(
        tmp_path, make_params, store_uri):
    from tinyllm.tracking.runs import TrackedRun, end_abandoned_runs, evaluation_run

    store = Store()
    left = TrackedRun.start(store, "tests", "killed", {}, {})
    gone = subprocess.Popen(["true"])  # the process that held it, SIGKILLed: gone
    gone.wait()
    left.set_tags({"tinyllm.pid": str(gone.pid)})
    assert store.client.get_run(left.id).info.status == "RUNNING"
    with evaluation_run(make_params(), tmp_path / "no-handoff.json", "next") as live:
        assert store.client.get_run(left.id).info.status == "KILLED"
        end_abandoned_runs(store, "tests")  # a live process's run is left alone
        assert store.client.get_run(live.id).info.status == "RUNNING"
    assert store.client.get_run(live.id).info.status == "FINISHED"


def test_a_reopened_run_gets_each_step_and_sample_once_the_retrained_ones_too(store_uri):
    """Killed once step 12 was logged, resumed from its step-8 checkpoint: the run keeps steps
    1-12 with the times they were logged at and gets 13 on, each once."""
    from types import SimpleNamespace

    from tinyllm.tracking.runs import TRAINING_SAMPLES, TrackedRun

    def train(run: TrackedRun, history: list[dict], steps: range) -> None:
        run.steps.on_start(history, None)
        for step in steps:
            history.append({"step": step, "train_loss": 1 / step, "val_loss": None})
            run.steps(SimpleNamespace(step=step, val_loss=None))
        run.steps.flush()

    store = Store()
    killed = TrackedRun.start(store, "tests", "killed", {}, {})
    history: list[dict] = []
    train(killed, history, range(1, 13))
    killed.log_samples([{"step": s, "prompt": "A", "text": "b"} for s in (4, 8, 12)])
    times = {m.step: m.timestamp for m in store.client.get_metric_history(
        killed.id, STEP_METRICS["train_loss"])}
    reopened = TrackedRun.reopen(store, store.client.get_run(killed.id), "tests")
    assert reopened.steps.logged_through == 12
    train(reopened, history[:8], range(9, 15))
    reopened.log_samples([{"step": s, "prompt": "A", "text": "b"} for s in (12, 14)])
    logged = store.client.get_metric_history(killed.id, STEP_METRICS["train_loss"])
    assert sorted(m.step for m in logged) == list(range(1, 15))
    assert all(m.timestamp == times[m.step] for m in logged if m.step <= 12)
    table = json.loads(Path(store.client.download_artifacts(killed.id, TRAINING_SAMPLES))
                       .read_text())
    assert [row[table["columns"].index("step")] for row in table["data"]] == [4, 8, 12, 14]


def test_run_names_say_what_differs_from_the_committed_params_and_never_repeat(
        tmp_path, monkeypatch, store_uri, corpus_dir):
    from tiny_project import tiny_params, write_params

    from tinyllm.config import params_from_dict
    from tinyllm.tracking.runs import TrackedRun, run_name

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert run_name(params_from_dict({"train": {"time_budget_minutes": 2, "seed": 7}})) == (
        "shakespeare train.seed=7 train.time_budget_minutes=2")  # not the keys its recipe set
    raw = tiny_params(str(corpus_dir))
    write_params(tmp_path / "params.yaml", raw)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "-q"], ["add", "params.yaml"], ["commit", "-qm", "params"]):
        subprocess.run([*git, *command], cwd=tmp_path, check=True)
    raw["train"]["learning_rate"], raw["model"]["qk_norm"] = 0.01, False
    assert run_name(params_from_dict(raw)) == "tiny model.qk_norm=false train.learning_rate=0.01"
    monkeypatch.setenv("DVC_EXP_NAME", "sappy-lair")
    assert run_name(params_from_dict(raw)) == (
        "tiny model.qk_norm=false train.learning_rate=0.01 (sappy-lair)")
    store = Store()
    names = [TrackedRun.start(store, "tests", "tiny", {}, {}).id for _ in range(3)]
    assert [store.client.get_run(i).info.run_name for i in names] == ["tiny", "tiny #2", "tiny #3"]

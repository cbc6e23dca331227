"""`tinyllm runs`: tracked runs grouped by recipe, and the experiment that is not there."""

from __future__ import annotations

import json

from tinyllm import tracking


def test_the_session_run_is_listed_with_its_test_loss(invoke, tiny_model):
    result = invoke("runs", "--experiment", "cli-tests", "--json")
    assert result.exit_code == 0, result.stderr
    version = tracking.Store(tiny_model.uri).client.get_model_version("tiny", "1")
    [recipe] = [r for r in json.loads(result.stdout) if version.run_id in r["run_ids"]]
    assert recipe["over"] == "train.seed" and "1337" in recipe["values"]
    run = tracking.Store(tiny_model.uri).client.get_run(version.run_id)
    assert recipe["runs"] == 1  # the session's store holds this recipe's one run
    assert recipe["test_loss_mean"] == run.data.metrics["eval_test_loss"]
    assert recipe["test_loss_sd"] is None
    table = invoke("runs", "--experiment", "cli-tests").stdout
    assert "by recipe over train.seed" in table and "test loss (nats/char)" in table
    assert f"{recipe['test_loss_mean']:.4f}" in table  # the run's value, whatever the columns


def test_an_unknown_experiment_is_one_error_line(invoke, error_line, tiny_model):
    assert error_line(invoke("runs", "--experiment", "nope")) == (
        f"error: no MLflow experiment 'nope' in {tiny_model.uri}; run `dvc repro` or "
        "`dvc exp run` first, or pass --experiment")

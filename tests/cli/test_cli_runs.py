"""`tinyllm runs`: tracked runs by corpus and recipe, and the experiment that is not there."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from urllib.parse import parse_qsl, urlsplit

import pytest

from tinyllm.io import exclusive_lock
from tinyllm.tracking.runs import VAL_LOSS
from tinyllm.tracking.store import Store

# Two corpora; on the first, two recipes of one key pair apart, one of them over three seeds.
SWEEP = [("data/raw/plays", "0.001", "900", seed, loss)
         for seed, loss in (("1", 1.49), ("2", 1.51), ("1337", 1.50))] + [
    ("data/raw/plays", "0.003", "100", "13579", 1.70),
    ("data/raw/my_own_text_of_letters", "0.001", "900", "1337", 1.80)]


@pytest.fixture(scope="module")
def sweep_experiment(tiny_model) -> str:
    """Finished runs as a sweep leaves them (params and test metrics), without training."""
    client, name = Store(tiny_model.uri).client, "sweep-80-columns"
    with exclusive_lock(tiny_model.root / f"{name}.lock"):  # xdist's workers share the store
        if client.get_experiment_by_name(name) is not None:
            return name
        experiment = client.create_experiment(name)
        for corpus, rate, steps, seed, loss in SWEEP:
            run = client.create_run(experiment).info.run_id
            for key, value in {"data.corpus": corpus, "train.learning_rate": rate,
                               "train.max_steps": steps, "train.seed": seed,
                               "model.n_layer": "4"}.items():
                client.log_param(run, key, value)
            client.log_metric(run, "eval_test_loss", loss)
            client.log_metric(run, "eval_test_bits_per_char", loss / 0.6931)
            client.set_terminated(run, "FINISHED")
    return name


def test_the_session_run_is_listed_with_its_test_loss(invoke, tiny_model):
    result = invoke("runs", "--experiment", "cli-tests", "--json")
    assert result.exit_code == 0, result.stderr
    client = Store(tiny_model.uri).client
    version = client.get_model_version("tiny", "1")
    [recipe] = [r for r in json.loads(result.stdout) if version.run_id in r["run_ids"]]
    assert recipe["over"] == "train.seed" and "1337" in recipe["values"]
    losses = [client.get_run(i).data.metrics["eval_test_loss"] for i in recipe["run_ids"]]
    assert recipe["runs"] == len(losses) == len(recipe["values"])
    assert recipe["test_loss_mean"] == pytest.approx(statistics.fmean(losses))
    assert (recipe["test_loss_sd"] is None) == (len(losses) == 1)
    table = invoke("runs", "--experiment", "cli-tests").stdout
    assert "by recipe over train.seed" in table and "test bits/char" in table


def check_fits_80_columns_whole(out: str) -> None:
    out, link = out.split("\nTheir validation loss curves in mlflow ui:\n")  # a URL: no wrap
    intro, *tables = out.splitlines()  # the intro is a sentence naming the store: it may wrap
    assert intro.startswith("Runs of experiment") and max(map(len, tables)) <= 80, out
    assert link.endswith(" (after `mlflow ui` in the project root)\n")
    plays, letters = out.split("corpus data/raw/plays:")[1].split(
        "corpus data/raw/my_own_text_of_letters:")  # one table a corpus, best corpus first
    for header in ("recipe", "runs", "train.seed", "test loss", "(nats/char)", "test bits/char"):
        assert header in plays, out
    # Every key and value whole, the run count visible: recipe, count, seeds, loss.
    assert re.search(r"train\.learning_rate=0\.001 +3 +1, 2, 1337 +1\.5000 ± 0\.0100", plays), out
    assert "train.max_steps=900" in plays and "train.max_steps=100" in plays
    assert re.search(r"train\.learning_rate=0\.003 +1 +13579 +1\.7000", plays), out
    assert re.search(r" 1 +1337 +1\.8000", letters) and "recipe" not in letters, out


def test_fits_80_columns_in_a_pipe_grouped_by_corpus(tiny_model, sweep_experiment):
    env = {k: v for k, v in tiny_model.env().items() if k not in ("COLUMNS", "LINES")}
    piped = subprocess.run([tiny_model.command, "runs", "--experiment", sweep_experiment],
                           capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    check_fits_80_columns_whole(piped.stdout)


def test_fits_columns_80(invoke, monkeypatch, sweep_experiment):
    monkeypatch.setenv("COLUMNS", "80")
    result = invoke("runs", "--experiment", sweep_experiment)
    assert result.exit_code == 0, result.stderr
    check_fits_80_columns_whole(result.stdout)
    recipes = json.loads(invoke("runs", "--experiment", sweep_experiment, "--json").stdout)
    [plays] = [r for r in recipes if r["runs"] == 3]
    assert plays["corpus"] == "data/raw/plays" and plays["values"] == ["1", "2", "1337"]
    # The link opens mlflow ui's model-training layout on every listed run's validation loss.
    link = result.stdout.splitlines()[-1].split()[0]
    page, query = urlsplit(link).fragment.split("?")
    settings = {key: json.loads(value) if value.startswith(("[", '"')) else value
                for key, value in parse_qsl(query)}
    assert page == "/metric" and settings.pop("workflowType") == "machine_learning"
    assert settings.pop("runs") == [i for r in recipes for i in r["run_ids"]]
    assert settings == {"metric": VAL_LOSS, "experiments": [settings["experiments"][0]],
                        "plot_metric_keys": [VAL_LOSS], "x_axis": "step"}


def test_an_unknown_experiment_is_one_error_line(invoke, error_line, tiny_model):
    assert error_line(invoke("runs", "--experiment", "nope")) == (
        f"error: no MLflow experiment 'nope' in {tiny_model.uri}; run `dvc repro` or "
        "`dvc exp run` first, or pass --experiment")

"""`tinyllm train`'s assembly (adhoc_training.py): a model name from the data path, and
params.yaml (or the defaults) with the options on top. Fast: nothing trains."""

from __future__ import annotations

import pytest

from tinyllm import adhoc_training
from tinyllm.errors import TinyLLMError


@pytest.mark.parametrize(("data_path", "name"), [
    ("my text (1).txt", "my_text__1_"), ("notes.v2.md", "notes.v2"), ("-.txt", "model")])
def test_model_name_for_a_file_is_its_stem_with_odd_characters_replaced(data_path, name):
    assert adhoc_training.model_name_for(data_path) == name


def test_model_name_for_a_directory_is_its_name(tmp_path):
    (tmp_path / "plays.d").mkdir()
    assert adhoc_training.model_name_for(str(tmp_path / "plays.d")) == "plays.d"


def test_adhoc_params_put_the_overrides_over_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml: the built-in defaults
    params = adhoc_training.adhoc_params("text.txt", "mine", False,
                                   {"model.n_layer": 1, "data.val_fraction": 0.2})
    assert (params.data.corpus, params.tracking.registry_name) == ("text.txt", "mine")
    assert params.tracking.enabled is False and params.model.n_layer == 1
    assert params.data.test_fraction == 0.2  # the same share held out for test


def test_a_refused_option_is_named_by_the_key_it_set(tmp_path, monkeypatch):
    """The recipe's refusal (recipes.py) and a cross-key check (config.Params.check) name the
    option that set the key, as a range check does."""
    from tinyllm.cli import train_params

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TinyLLMError, match=r"^--batch-size: train\.batch_size is 7, but"):
        train_params("text.txt", "mine", False, {"time_budget": 5.0, "batch_size": 7,
                                                "device": "cpu", "layers": None})
    with pytest.raises(TinyLLMError, match=r"^--width: model\.d_model \(16\) must be divisible"):
        train_params("text.txt", "mine", False, {"heads": 3, "width": 16})
    with pytest.raises(TinyLLMError, match=r"^model\.d_model \(128\) must be divisible"):
        train_params("text.txt", "mine", False, {"heads": 3})  # --width not given: no option


def test_adhoc_params_refuse_a_bad_override_naming_its_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TinyLLMError, match=r"^model\.dropout must be <= 0\.9"):
        adhoc_training.adhoc_params("text.txt", "mine", True, {"model.dropout": 2.0})

"""params.yaml validation: every rejected value is a TinyLLMError that names its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tinyllm.config import Params, load_params, params_from_dict
from tinyllm.errors import TinyLLMError
from tinyllm.recipes import recipe_for
from tinyllm.training.plan import warmup_for

REPO_PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def test_repo_params_yaml_loads():
    params = load_params(REPO_PARAMS)
    assert isinstance(params, Params)
    assert params.model.d_model % params.model.n_head == 0
    assert isinstance(params.train.learning_rate, float)


def test_empty_params_give_defaults():
    assert params_from_dict({}) == Params()


@pytest.mark.parametrize(("raw", "expected"), [
    ({"train": {"learnig_rate": 1e-3}}, ["train.learnig_rate", "did you mean 'learning_rate'"]),
    ({"trian": {}}, ["'trian'", "did you mean 'train'"]),
    ({"train": {"max_steps": "100"}}, ["train.max_steps", "integer"]),
    ({"model": {"n_layer": True}}, ["model.n_layer", "integer"]),
    ({"train": {"compile": 1}}, ["train.compile", "true or false"]),
    ({"train": {"seed": -1}}, ["train.seed", ">= 0"]),
    ({"train": {"seed": 2**64}}, ["train.seed", f"<= {2**63 - 1}"]),  # torch's seed is 64-bit
    ({"train": {"learning_rate": 0}}, ["train.learning_rate", "> 0"]),
    ({"data": {"val_fraction": 0.0}}, ["data.val_fraction", "> 0"]),
    ({"model": {"dropout": 0.95}}, ["model.dropout", "<= 0.9"]),
    ({"train": {"device": "tpu"}}, ["train.device", "auto, cpu, cuda, mps", "'tpu'"]),
    ({"data": {"unicode_normalization": "nfc"}}, ["data.unicode_normalization"]),
    ({"model": {"d_model": 130, "n_head": 4}}, ["model.d_model", "model.n_head"]),
    ({"model": {"positions": "alibi"}}, ["model.positions", "learned, rotary", "'alibi'"]),
    ({"model": {"qk_norm": "yes"}}, ["model.qk_norm", "true or false"]),
    ({"model": {"activation": "swiglu"}}, ["model.activation", "gelu, relu2"]),
    ({"model": {"d_model": 12, "n_head": 4}}, ["model.positions rotary", "(model.d_model / "
                                               "model.n_head = 3) must be even"]),
    ({"train": "fast"}, ["'train'", "mapping"]),
    ({"evaluate": {"max_chars": -1}}, ["evaluate.max_chars", ">= 0"]),
    ({"evaluate": {"max_chars": 2**64}}, ["evaluate.max_chars", f"<= {2**63 - 1}"]),
    ({"evaluate": {"max_chars": "1e5"}}, ["evaluate.max_chars", "integer", "'1e5'"]),
    ({"evaluate": {"max_chars": 1.5}}, ["evaluate.max_chars", "integer"]),
    ({"evaluate": {"max_chars": None}}, ["evaluate.max_chars", "integer"]),
])
def test_invalid_params_name_the_key(raw, expected):
    with pytest.raises(TinyLLMError) as excinfo:
        params_from_dict(raw)
    assert "\n" not in str(excinfo.value)  # one line
    for fragment in expected:
        assert fragment in str(excinfo.value)


def test_a_warm_up_as_long_as_the_run_is_capped_not_refused():
    """`dvc exp run -S train.max_steps=100` with the default warm-up of 100 steps trains."""
    params = params_from_dict({"train": {"max_steps": 100, "learning_rate": 1e-2}})
    assert params.train.warmup_steps == 100  # the key as written; the run takes warmup_for's
    assert warmup_for(params.train.warmup_steps, params.train.max_steps) == 12
    defaults = Params().train
    assert warmup_for(defaults.warmup_steps, defaults.max_steps) == defaults.warmup_steps == 100
    assert warmup_for(100, 1566) == 100  # a 1-minute budget's plan keeps its warm-up
    assert warmup_for(0, 100) == 0 and warmup_for(100, 4) == 0


def test_missing_params_file(tmp_path):
    with pytest.raises(TinyLLMError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_malformed_yaml_reports_line_number(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  seed: 1\n  max_steps: [1, 2\n  batch_size: 4\n")
    with pytest.raises(TinyLLMError) as excinfo:
        load_params(path)
    message = str(excinfo.value)
    assert "malformed YAML" in message
    assert "line 4" in message


@pytest.mark.parametrize("written", ["3e-3", '"3e-3"'])
def test_exponent_written_as_yaml_string_is_a_float(tmp_path, written):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  learning_rate: {written}\n")
    params = load_params(path)
    assert params.train.learning_rate == pytest.approx(0.003)
    assert isinstance(params.train.learning_rate, float)


def test_non_numeric_string_for_float_is_rejected():
    with pytest.raises(TinyLLMError, match=r"train\.learning_rate must be a number"):
        params_from_dict({"train": {"learning_rate": "fast"}})


def test_flat_gives_dotted_keys():
    flat = params_from_dict({"train": {"max_steps": 777}}).flat()
    assert flat["train.max_steps"] == 777
    assert flat["model.n_head"] == Params().model.n_head
    assert all(key.count(".") == 1 for key in flat)
    assert {key.split(".")[0] for key in flat} == {
        "data", "tokenizer", "model", "train", "evaluate", "tracking"}


def test_built_in_defaults_are_the_shipped_params_yaml():
    """`tinyllm train` where there is no params.yaml trains the documented default."""
    assert load_params(REPO_PARAMS) == Params()


def test_the_model_assumes_no_shape_default_of_its_own():
    """GPTConfig's defaults (no dropout, the block) are params.yaml's; the shape comes from
    params."""
    import dataclasses

    from tinyllm.config import ModelConfig
    from tinyllm.model import GPTConfig

    own = {f.name: f.default for f in dataclasses.fields(GPTConfig)
           if f.default is not dataclasses.MISSING}
    block = ("dropout", "positions", "qk_norm", "activation")
    assert own == {name: getattr(ModelConfig(), name) for name in block}


def test_recipe_auto_fits_the_untouched_keys_to_the_budget():
    params = params_from_dict({"train": {"time_budget_minutes": 2.5}})
    row, values = recipe_for(2.5)
    assert row == 2
    assert params.flat() | values == params.flat()  # every recipe key took the row's value
    assert params_from_dict({"train": {"time_budget_minutes": 0}}) == Params()  # no budget
    as_given = params_from_dict({"train": {"time_budget_minutes": 2.5, "recipe": "none"},
                                 "model": {"d_model": 256}})
    assert as_given.model.d_model == 256 and as_given.train.max_steps == Params().train.max_steps


@pytest.mark.parametrize("raw, message", [
    ({"train": {"time_budget_minutes": 5, "batch_size": 7}},
     "train.batch_size is 7, but train.recipe auto sets it to"),
    ({"train": {"time_budget_minutes": 5, "max_steps": 50}},
     "train.max_steps is 50, but train.recipe auto sets it to"),
    ({"train": {"time_budget_minutes": 5, "optimizer": "adamw"}},
     "train.optimizer is adamw, but train.recipe auto sets it to muon"),
    ({"train": {"time_budget_minutes": -1}}, "train.time_budget_minutes must be >= 0.0, got -1"),
    ({"train": {"recipe": "fast"}}, "train.recipe must be one of auto, none; got 'fast'"),
    ({"train": {"optimizer": "sgd"}}, "train.optimizer must be one of adamw, muon; got 'sgd'"),
])
def test_recipe_contradictions_name_the_key(raw, message):
    with pytest.raises(TinyLLMError, match="^" + re.escape(message)) as caught:
        params_from_dict(raw)
    assert caught.value.key == message.split()[0]  # what the CLI maps to its option


@pytest.mark.parametrize("raw, key", [
    ({"model": {"n_head": 3}}, "model.d_model"),
    ({"data": {"val_fraction": 0.45, "test_fraction": 0.45}}, "data.val_fraction"),
    ({"evaluate": {"prompts": [""]}}, "evaluate.prompts"),
    ({"model": {"dropout": 2}}, "model.dropout"),
    ({"evaluate": {"max_chars": -5}}, "evaluate.max_chars"),
])
def test_every_refused_value_carries_the_key_it_is_about(raw, key):
    with pytest.raises(TinyLLMError, match="^" + re.escape(key)) as caught:
        params_from_dict(raw)
    assert caught.value.key == key


def test_the_recipes_default_model_is_the_defaults_but_for_the_budgets_keys():
    """recipes.py cannot import config.py (config applies the recipes), so its row for the
    default model restates the defaults: they must agree except where the budget decides."""
    from tinyllm.recipes import _DEFAULT_MODEL

    defaults = Params().flat()
    differing = {key for key, value in _DEFAULT_MODEL.items() if defaults[key] != value}
    assert differing == {"train.max_steps", "train.eval_interval"}


def test_the_results_budget_table_names_each_budgets_recipe():
    """The budget table's "(auto)" rows (docs/results.md) say which recipe each budget gets:
    they follow recipes.py."""
    from tinyllm.recipes import BY_BUDGET

    results = (REPO_PARAMS.parent / "docs" / "results.md").read_text(encoding="utf-8")
    auto = re.findall(r"^\| (\d+) min \| \**(.+?)\** \(auto\) \|", results, re.MULTILINE)
    assert sorted(float(minutes) for minutes, _ in auto) == sorted(BY_BUDGET)
    defaults = Params()
    for minutes, name in auto:
        values = BY_BUDGET[float(minutes)]
        shape = (values["model.context_length"], values["train.batch_size"])
        optimizer = {"muon": "Muon", "adamw": "AdamW"}[values["train.optimizer"]]
        learned = values.get("model.positions", defaults.model.positions) == "learned"
        block = "GPT-2's block" if learned else "new block"
        if name.startswith("default model"):
            assert shape == (defaults.model.context_length, defaults.train.batch_size)
            assert name == f"default model, {optimizer}, {block}"
        else:
            assert name == f"context {shape[0]}, batch {shape[1]}, {optimizer}, {block}"


def test_recipe_auto_picks_the_recipe_of_the_device_it_will_train_on():
    from tinyllm.recipes import BY_DEVICE

    on_gpu = params_from_dict({"train": {"time_budget_minutes": 3, "device": "cuda"}})
    assert on_gpu.flat() | BY_DEVICE["cuda"][1] == on_gpu.flat()  # the GPU's recipe, AdamW
    assert on_gpu.train.optimizer == "adamw" and on_gpu.model.n_layer == 6
    on_cpu = params_from_dict({"train": {"time_budget_minutes": 3, "device": "cpu"}})
    assert on_cpu.flat() | BY_DEVICE["cpu"][2] == on_cpu.flat()
    # auto: where training will run; this machine has no GPU, so the CPU's.
    auto = params_from_dict({"train": {"time_budget_minutes": 3}})
    assert auto.flat() | BY_DEVICE["cpu"][2] == auto.flat()
    with pytest.raises(TinyLLMError, match=r"^train\.batch_size is 16, but train\.recipe auto "
                                           r"sets it to 64 for a 3-minute budget on cuda"):
        params_from_dict({"train": {"time_budget_minutes": 3, "device": "cuda",
                                    "batch_size": 16}})

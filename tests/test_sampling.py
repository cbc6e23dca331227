"""One sampling definition: every surface exposes SamplingConfig's fields, defaults and checks."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
import yaml
from click.testing import CliRunner
from tiny_project import ROOT

from tinyllm import chat
from tinyllm.cli import cli
from tinyllm.config import EvaluateConfig, SamplingConfig
from tinyllm.errors import TinyLLMError
from tinyllm.generate import Sampler, filter_logits, sampling_logits, tempered
from tinyllm.package import LoadedModel
from tinyllm.serving.requests import ChatRequest, CompletionRequest
from tinyllm.tracking.runs import signature

DEFAULTS = {f.name: f.default for f in dataclasses.fields(SamplingConfig)}
BAD = [({"top_p": 0}, "top_p must be > 0.0, got 0.0"),
       ({"temperature": -1}, "temperature must be >= 0.0, got -1.0"),
       ({"max_tokens": 0}, "max_tokens must be >= 1, got 0"),
       ({"max_tokens": -5}, "max_tokens must be >= 1, got -5"),
       ({"top_k": -3}, "top_k must be >= 0, got -3"),
       ({"top_p": 1.5}, "top_p must be <= 1.0, got 1.5"),
       ({"min_p": 2}, "min_p must be <= 1.0, got 2.0"),
       ({"seed": 2**64}, f"seed must be <= {2**63 - 1}, got {2**64}"),
       ({"seed": -1}, "seed must be >= 0, got -1")]


def option_defaults(command: str) -> dict:
    params = cli.commands[command].params
    return {p.name: p.default for p in params if p.name in DEFAULTS}


def test_every_surface_exposes_exactly_the_settings_and_defaults():
    assert option_defaults("generate") == DEFAULTS
    assert option_defaults("chat") == DEFAULTS
    assert {f.name for f in chat.KNOBS.values()} == set(DEFAULTS)
    params = signature().params  # MLflow fills in defaults: an unseeded request must not
    assert {p.name: p.default for p in params} == {**DEFAULTS, "seed": None}  # get 1337
    evaluate = EvaluateConfig()
    assert {k: v for k, v in dataclasses.asdict(evaluate.sampling()).items()} == {
        **DEFAULTS, "top_p": 0.95}  # evaluate's own default
    for request in (CompletionRequest, ChatRequest):  # tinyllm serve's request fields; an
        # unseeded request draws a fresh seed (OpenAI's meaning), which the response names
        assert {name: request.model_fields[name].default for name in DEFAULTS} == {
            **DEFAULTS, "seed": None}
    written = yaml.safe_load((ROOT / "params.yaml").read_text())["evaluate"]
    assert set(DEFAULTS) <= set(written)


def test_the_python_api_checks_values_before_generating(model, tokenizer):
    loaded = LoadedModel(model, tokenizer, {}, ROOT)
    for values, message in BAD:
        with pytest.raises(TinyLLMError, match=f"^{re.escape(message)}$"):
            loaded.generate("ROMEO:", **values)
    with pytest.raises(TinyLLMError, match=r"unknown sampling setting 'top_pp'.*'top_p'"):
        loaded.generate("ROMEO:", top_pp=0.5)
    assert len(loaded.generate("ROMEO:", max_tokens=7, temperature=0)) == 7


@pytest.mark.parametrize("values, message", BAD)
def test_the_cli_gives_the_same_message_in_one_line_and_exit_1(values, message, tmp_path):
    [(name, value)] = values.items()
    option = f"--{name.replace('_', '-')}"
    result = CliRunner().invoke(cli, ["generate", "--prompt", "x", "--model-uri",
                                      str(tmp_path), option, str(value)])
    assert result.exit_code == 1
    assert result.stderr == f"error: {option}: {message}\n"


def test_chat_slash_commands_give_the_same_message():
    console = chat.Console(None, SamplingConfig(), "t", stdout=_Lines(), stderr=_Lines())
    console.handle("/seed 99999999999999999999999")
    console.handle("/minp 0.1")
    assert f"/seed: seed must be <= {2**63 - 1}, got 99999999999999999999999" in (
        console.stderr.text)
    assert console.settings.min_p == 0.1


class _Lines:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_min_p_keeps_the_characters_at_least_that_fraction_as_likely_as_the_top_one():
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08])
    kept = filter_logits(probs.log(), min_p=0.2) > float("-inf")
    assert kept.tolist() == [True, True, True, False]  # 0.08 < 0.2 x 0.5
    assert torch.equal(filter_logits(probs.log(), min_p=0.0), probs.log())


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-45, 1e-37, 1e-6, 10.0])
def test_any_accepted_temperature_samples_from_a_distribution_without_nan(temperature):
    """The smallest temperatures overflowed logits / temperature to inf, whose softmax is NaN
    (torch.multinomial then raised in the server's decoder), and a top_p of 5e-324 (0 in
    float32) filtered out every token. Near 0 a draw is the argmax."""
    logits = torch.tensor([0.0, 1.0, 3.0, -2.0, 2.9, 40.0, -40.0])
    logits[5] = 3.0  # a tie with the most likely: near 0 the draw is one of the two
    for top_k, top_p, min_p in [(0, 1.0, 0.0), (2, 0.5, 0.1), (0, 5e-324, 1.0)]:
        settings = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p,
                                  min_p=min_p, frequency_penalty=2.0, seed=3)
        sampler = Sampler(settings, len(logits), top_logprobs=3)
        scores = sampling_logits(logits, settings)
        assert not scores.isnan().any() and not scores.isposinf().any()
        draw = sampler.draw(logits)
        assert math.isfinite(draw.logprob)
        if temperature < 1e-6:
            assert draw.token in (2, 5)
    assert not tempered(logits, temperature).isnan().any()


def test_nan_logits_are_an_error_not_a_draw():
    """Greedy argmax would silently pick a NaN; a draw would fail deep inside torch."""
    logits = torch.tensor([0.0, float("nan"), 1.0])
    for temperature in (0.0, 0.8):
        with pytest.raises(FloatingPointError, match="logits hold NaN"):
            Sampler(SamplingConfig(temperature=temperature), 3).draw(logits)


def test_the_mlflow_model_draws_fresh_seeds_and_its_errors_carry_no_traceback():
    """MLflow answers an MlflowException with its message; any other exception with a 400
    holding our traceback."""
    from mlflow.exceptions import MlflowException

    from tinyllm.tracking import pyfunc

    assert len({pyfunc.settings_for({"seed": None}).seed for _ in range(5)}) > 1
    assert pyfunc.settings_for({"seed": 7}).seed == 7

    class Broken:
        def stream(self, prompt, settings):
            raise FloatingPointError("the model's logits hold NaN")
            yield

    model = pyfunc.TinyLLMModel()
    model.loaded = Broken()
    with pytest.raises(MlflowException, match="generation failed: FloatingPointError") as info:
        model.predict(None, ["ROMEO:"])
    assert info.value.get_http_status_code() == 500
    assert "stack_trace" not in info.value.serialize_as_json()

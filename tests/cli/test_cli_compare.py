"""`tinyllm compare A B`: paired per-character scores with a block-bootstrap interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_project import tiny_params

from tinyllm import workflow
from tinyllm.config import params_from_dict
from tinyllm.tokenizer import CharTokenizer


@pytest.fixture(scope="module")
def barely_trained(tiny_model, tmp_path_factory) -> Path:
    """A 10-step model on the session model's data (tracking off): a package directory."""
    layout = workflow.Layout(tmp_path_factory.mktemp("ten-steps"))
    params = params_from_dict(tiny_params(str(tiny_model.corpus), **{
        "train.max_steps": 10, "train.eval_interval": 5, "tracking.enabled": False}))
    workflow.build(params, layout, through=workflow.train)
    return layout.model


@pytest.fixture
def test_text(tiny_model) -> Path:
    return tiny_model.root / "build/data/prepared/test.txt"


def compare_json(invoke, *args) -> dict:
    result = invoke("compare", *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_a_model_against_itself_differs_by_nothing(invoke, tiny_model, test_text):
    out = compare_json(invoke, "models:/tiny/1", tiny_model.package, "--text", test_text)
    assert out["difference"] == 0
    assert out["low"] <= 0 <= out["high"]
    assert out["real"] is False
    assert out["a_bits_per_char"] == out["b_bits_per_char"]
    assert out["characters"] == len(test_text.read_text()) - 1
    assert out["left_out"] == 0


def test_a_trained_model_beats_a_ten_step_one_beyond_the_noise(invoke, tiny_model,
                                                              barely_trained, test_text):
    result = invoke("compare", barely_trained, "models:/tiny/1", "--text", test_text)
    assert result.exit_code == 0, result.stderr
    out = compare_json(invoke, barely_trained, "models:/tiny/1", "--text", test_text)
    assert out["b_bits_per_char"] < out["a_bits_per_char"]
    assert out["low"] <= out["difference"] <= out["high"] < 0
    assert out["real"] is True
    assert out["block_length"] == 4 * 16  # four of the tiny models' 16-character context
    assert f"{out['difference']:+.4f} bits/char, 95% CI [{out['low']:+.4f}, " \
           f"{out['high']:+.4f}]" in result.stdout
    assert "The difference is real at the 95% level: B predicts this text better" \
        in result.stdout


def test_the_same_seed_gives_the_same_output_and_another_seed_another_interval(
        invoke, tiny_model, barely_trained, test_text):
    args = ("compare", barely_trained, tiny_model.package, "--text", test_text, "--seed", "7")
    first, second = invoke(*args), invoke(*args)
    assert first.exit_code == 0, first.stderr
    assert first.stdout == second.stdout
    same, other = compare_json(invoke, *args[1:]), compare_json(invoke, *args[1:-1], "8")
    # Another seed resamples other blocks: another interval (a narrow one may agree to the 4
    # decimals the table prints, so the JSON's full values are compared).
    assert (other["low"], other["high"]) != (same["low"], same["high"])
    assert f"[{same['low']:+.4f}, {same['high']:+.4f}]" in first.stdout


def test_the_default_text_is_the_test_split(invoke, tiny_model, test_text, monkeypatch):
    monkeypatch.chdir(tiny_model.root / "build")
    out = compare_json(invoke, tiny_model.package, tiny_model.package)
    assert out["text"] == "data/prepared/test.txt"
    assert out["characters"] == len(test_text.read_text()) - 1


def test_characters_one_vocabulary_lacks_are_left_out_and_counted(
        invoke, tiny_model, test_text, tmp_path):
    """A package whose tokenizer lacks 'e' (its weights unchanged): 'e' is not scored."""
    narrow = tmp_path / "narrow"
    narrow.mkdir()
    for file in tiny_model.package.iterdir():
        (narrow / file.name).write_bytes(file.read_bytes())
    tokenizer = CharTokenizer.load(narrow / "tokenizer.json")
    chars = [("\u00e9" if c == "e" else c) for c in tokenizer.chars]  # same size, no 'e'
    CharTokenizer(chars, tokenizer.unknown).save(narrow / "tokenizer.json")
    text = test_text.read_text()
    out = compare_json(invoke, tiny_model.package, narrow, "--text", test_text)
    assert out["left_out"] == text.count("e")
    assert out["left_out_distinct"] == "e"
    assert out["characters"] == len(text) - text.count("e") - 1
    plain = invoke("compare", tiny_model.package, narrow, "--text", test_text)
    assert f"left out {text.count('e'):,} characters outside one model's vocabulary: 'e'" \
        in plain.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("", "is empty: nothing to score"),
    ("ROMEO: hath", "characters both models know, not more than the context length 16"),
    ("ROMEO: love thou night. " * 10, "fewer than 10 blocks of 64"),
])
def test_texts_too_short_to_judge_are_one_error_line(invoke, error_line, tiny_model, tmp_path,
                                                    text, expected):
    path = tmp_path / "short.txt"
    path.write_text(text)
    line = error_line(invoke("compare", tiny_model.package, tiny_model.package, "--text", path))
    assert str(path) in line and expected in line


def test_missing_model_text_or_default_text_is_one_error_line(invoke, error_line, tiny_model,
                                                             test_text):
    assert error_line(invoke("compare", "nowhere", tiny_model.package, "--text", test_text)) \
        == "error: model directory not found: nowhere"
    assert error_line(invoke("compare", "models:/nope/1", tiny_model.package, "--text",
                             test_text)).startswith("error: no registered model named 'nope'")
    assert error_line(invoke("compare", tiny_model.package, tiny_model.package, "--text",
                             "missing.txt")) == "error: text file not found: missing.txt"
    assert error_line(invoke("compare", tiny_model.package, tiny_model.package)) == (
        "error: text file not found: data/prepared/test.txt (run `dvc repro` to prepare it, "
        "or pass --text FILE)")


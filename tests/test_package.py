"""Model packages: round trip, the public load_model API, and refusal of damaged or unsafe files."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil

import pytest
import torch
from tiny_project import OLD_BLOCK_PACKAGE, OLD_BLOCK_TEXT

import tinyllm
from tinyllm.errors import TinyLLMError
from tinyllm.package import FORMAT_1_BLOCK, FORMAT_VERSION, load_package, save_package


@pytest.fixture
def package(tmp_path, model, tokenizer):
    return save_package(tmp_path / "model", model, tokenizer, meta={"steps": 7})


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _load_error(path) -> TinyLLMError:
    with pytest.raises(TinyLLMError) as excinfo:
        load_package(path)
    error = excinfo.value
    assert error.__cause__ is None  # no chained torch/json traceback behind the message
    assert error.__suppress_context__ or error.__context__ is None
    return error


def test_round_trip_gives_identical_logits(package, model, tokenizer, gpt_config):
    loaded = load_package(package)
    assert loaded.config == gpt_config
    assert loaded.tokenizer.chars == tokenizer.chars
    assert loaded.meta["steps"] == 7 and "torch" in loaded.meta["versions"]
    idx = torch.from_numpy(tokenizer.encode("ROMEO: But soft").astype("int64"))[None]
    with torch.no_grad():
        assert torch.equal(loaded.model(idx)[0], model(idx)[0])


def test_saving_again_replaces_the_package(package, model, tokenizer):
    with torch.no_grad():
        model.ln_f.weight.fill_(2.0)
    save_package(package, model, tokenizer)
    assert torch.equal(load_package(package).model.ln_f.weight, model.ln_f.weight)
    assert not [p for p in package.parent.iterdir() if p.name != "model"]  # no staging left


def test_public_load_model_generates_and_streams(package):
    loaded = tinyllm.load_model(package)
    text = loaded.generate("ab", max_tokens=5, temperature=0)
    assert isinstance(text, str) and len(text) == 5
    pieces = list(loaded.stream("ab", max_tokens=5, temperature=0))
    assert len(pieces) == 5 and "".join(pieces) == text


def test_missing_package_directory(tmp_path):
    assert "not found" in str(_load_error(tmp_path / "absent"))


def test_missing_weights_file(package):
    (package / "weights.pt").unlink()
    assert "missing" in str(_load_error(package))


def test_truncated_weights(package):
    weights = package / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:500])
    message = str(_load_error(package))
    assert f"{weights} is truncated or corrupt: " in message and "\n" not in message
    # torch's long message, in whole sentences: it was cut at "...there is a high" before
    assert "failed finding central directory." in message and message.endswith(".")


@pytest.mark.parametrize("change, detail", [
    (lambda c: {"d_model": c.d_model * 2}, "the config needs"),  # more than the file holds
    (lambda c: {"d_model": c.d_model // 2}, "shape"),
    (lambda c: {"n_layer": c.n_layer - 1}, "unexpected ['blocks.1."),
])
def test_config_that_does_not_match_the_weights(package, gpt_config, change, detail):
    _edit_json(package / "config.json", **change(gpt_config))
    message = str(_load_error(package))
    assert "does not match config.json" in message and detail in message


@pytest.mark.parametrize(("changes", "message"), [
    ({"context_length": 2**40}, "'context_length' must be <= 65536"),  # 140 TB of tables
    ({"d_model": 2**16}, "does not match config.json"),  # 200 GB of weights
])
def test_config_claiming_a_giant_model_is_refused_without_allocating_it(package, changes,
                                                                        message):
    _edit_json(package / "config.json", **changes)
    assert message in str(_load_error(package))


def test_tokenizer_size_does_not_match_config(package):
    tokenizer_file = package / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    _edit_json(tokenizer_file, chars=data["chars"][:-1])
    message = str(_load_error(package))
    assert "tokenizer.json" in message and "vocab_size" in message


def test_unknown_format_version(package):
    _edit_json(package / "config.json", format_version=99)
    assert "unsupported format_version 99" in str(_load_error(package))


def test_a_package_written_before_the_block_was_recorded_still_generates_its_text(tmp_path):
    """The fixture of tinyllm as of e16527a (format_version 1) loads as GPT-2's block and samples
    what that code sampled from it."""
    loaded = load_package(shutil.copytree(OLD_BLOCK_PACKAGE, tmp_path / "old"))
    assert dataclasses.asdict(loaded.config).items() >= FORMAT_1_BLOCK.items()
    text = loaded.generate("ROMEO:", max_tokens=40, seed=1337, temperature=0.8)
    assert text == OLD_BLOCK_TEXT


def test_a_saved_package_records_its_block(package, gpt_config):
    config = json.loads((package / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION
    assert {k: config[k] for k in FORMAT_1_BLOCK} == {
        k: getattr(gpt_config, k) for k in FORMAT_1_BLOCK}


@pytest.mark.parametrize(("changes", "message"), [
    ({"positions": "alibi"}, "'positions' must be one of learned, rotary; got 'alibi'"),
    ({"qk_norm": "yes"}, "'qk_norm' must be true or false, got 'yes'"),
    ({"activation": None}, "'activation' must be a string, got None"),
    ({"softcap": 15.0}, "unknown field 'softcap' (a newer tinyllm's model?"),
])
def test_a_block_this_tinyllm_cannot_build_is_one_line_naming_the_file_and_field(
        package, changes, message):
    _edit_json(package / "config.json", **changes)
    error = str(_load_error(package))
    assert message in error and str(package / "config.json") in error and "\n" not in error


def test_config_with_bad_values(package):
    _edit_json(package / "config.json", n_layer="two")
    assert "'n_layer' must be an integer, got 'two'" in str(_load_error(package))
    _edit_json(package / "config.json", n_layer=2, dropout=2.0)
    assert "'dropout' must be <= 0.9, got 2.0" in str(_load_error(package))
    _edit_json(package / "config.json", dropout=0.0, vocab_size=0)
    assert "'vocab_size' must be a positive integer, got 0" in str(_load_error(package))
    _edit_json(package / "config.json", vocab_size=40, n_head=3)
    assert "inconsistent architecture" in str(_load_error(package))


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_weights_that_would_execute_code_are_refused(package, tmp_path, writer):
    pwned = tmp_path / "pwned"
    payload = {"tok_emb.weight": _Exploit(pwned)}
    if writer == "torch.save":
        torch.save(payload, package / "weights.pt")
    else:
        with open(package / "weights.pt", "wb") as handle:
            pickle.dump(payload, handle, protocol=2)
    message = str(_load_error(package))
    assert "holds objects other than tensors" in message
    assert not pwned.exists()


def test_weights_holding_non_tensor_values_are_refused(package):
    torch.save({"tok_emb.weight": [1, 2, 3]}, package / "weights.pt")
    assert "named tensors" in str(_load_error(package))


def test_weights_far_larger_than_the_config_needs_are_refused(package):
    with open(package / "weights.pt", "ab") as handle:
        handle.write(b"\0" * 5_000_000)
    assert "far more than a model of this config needs" in str(_load_error(package))


@pytest.mark.parametrize("name", ["weights.pt", "config.json", "tokenizer.json"])
def test_a_package_file_linking_outside_the_package_is_refused(package, tmp_path, name):
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    (package / name).rename(outside)
    (package / name).symlink_to(outside)
    assert "points outside the model package" in str(_load_error(package))


def test_weights_that_only_look_big_cannot_make_the_loader_build_a_big_model(package):
    """An expanded tensor has the elements a huge config claims but stores one value."""
    _edit_json(package / "config.json", n_layer=256, d_model=256, n_head=4)  # 201 M parameters
    torch.save({"x": torch.zeros(1).expand(10**9)}, package / "weights.pt")
    assert str(_load_error(package)).endswith("parameters, the file holds 1")

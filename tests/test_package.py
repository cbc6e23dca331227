"""Model packages: round trip, the public load_model API, and refusal of damaged or unsafe files."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

import tinyllm
from tinyllm.errors import TinyLLMError
from tinyllm.package import load_package, save_package


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


def test_config_claiming_a_giant_model_is_refused_without_allocating_it(package):
    _edit_json(package / "config.json", context_length=2**40)  # 140 TB of position embeddings
    assert "does not match config.json" in str(_load_error(package))


def test_tokenizer_size_does_not_match_config(package):
    tokenizer_file = package / "tokenizer.json"
    data = json.loads(tokenizer_file.read_text())
    _edit_json(tokenizer_file, chars=data["chars"][:-1])
    message = str(_load_error(package))
    assert "tokenizer.json" in message and "vocab_size" in message


def test_unknown_format_version(package):
    _edit_json(package / "config.json", format_version=99)
    assert "unsupported format_version 99" in str(_load_error(package))


def test_config_with_bad_values(package):
    _edit_json(package / "config.json", n_layer="two")
    assert "'n_layer' must be a non-negative int" in str(_load_error(package))
    _edit_json(package / "config.json", n_layer=2, dropout=2.0)
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
    _edit_json(package / "config.json", n_layer=4000)  # 49 M parameters
    torch.save({"x": torch.zeros(1).expand(10**9)}, package / "weights.pt")
    assert str(_load_error(package)).endswith("parameters, the file holds 1")

"""The model package: one directory format that training writes and every loader reads.

    config.json     architecture (shape and block) + format version
    tokenizer.json  vocabulary and unknown-character policy
    weights.pt      a plain state_dict of tensors, read with torch.load(weights_only=True)
    meta.json       training facts (steps, tokens, data fingerprint, metrics, versions)

Loading validates every file before use and never unpickles arbitrary objects.
"""

from __future__ import annotations

import pickle
import platform
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from tinyllm.config import ModelConfig, SamplingConfig, coerce_value
from tinyllm.errors import TinyLLMError, first_line, whole_sentences
from tinyllm.generate import compiled_for_generation, stream_text
from tinyllm.io import (
    atomic_write_json,
    current_directory,
    read_json,
    replace_directory,
    staging_directory,
)
from tinyllm.model import GPT, GPTConfig
from tinyllm.tokenizer import CharTokenizer, Encoded, describe_unknown

FORMAT = "tinyllm.model-package"
FORMAT_VERSION = 2  # 2 records the block (GPTConfig.positions, qk_norm, activation)
# Every package of format 1 holds GPT-2's block: learned positions, no QK-norm, GELU.
FORMAT_1_BLOCK = {"positions": "learned", "qk_norm": False, "activation": "gelu"}
READS = (1, FORMAT_VERSION)
CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, META_FILE = (
    "config.json", "tokenizer.json", "weights.pt", "meta.json")


def runtime_versions() -> dict[str, str]:
    from tinyllm.version import __version__

    return {"tinyllm": __version__, "torch": torch.__version__,
            "python": platform.python_version()}


def save_package(directory: str | Path, model: GPT, tokenizer: CharTokenizer,
                 meta: dict | None = None, state_dict: dict | None = None) -> Path:
    """Write a complete package to a staging directory, then swap it into place."""
    directory = Path(directory)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise TinyLLMError(f"tokenizer has {tokenizer.vocab_size} ids but the model expects "
                           f"{model.config.vocab_size}")
    staging = staging_directory(directory)
    try:
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(model.config)}
        atomic_write_json(staging / CONFIG_FILE, config)
        tokenizer.save(staging / TOKENIZER_FILE)
        weights = state_dict if state_dict is not None else model.state_dict()
        torch.save({k: v.detach().cpu() for k, v in weights.items()}, staging / WEIGHTS_FILE)
        atomic_write_json(staging / META_FILE, {**(meta or {}), "versions": runtime_versions()})
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _read_json(path: Path) -> dict:
    data = read_json(path, "model package file")
    if not isinstance(data, dict):
        raise TinyLLMError(f"model package file {path} must hold a JSON object")
    return data


def read_config(path: Path) -> GPTConfig:
    """The architecture config.json describes; a field this tinyllm does not know, or a value it
    cannot build (a newer tinyllm's block, a hand edit), is an error naming the field."""
    data = _read_json(path)
    if data.get("format") != FORMAT:
        raise TinyLLMError(f"{path} is not a tinyllm model package config")
    version = data.pop("format_version", None)
    if version not in READS:
        raise TinyLLMError(f"{path} has unsupported format_version {version!r}"
                           f" (this tinyllm reads {', '.join(map(str, READS))})")
    data.pop("format")
    if version == 1:
        data = {**FORMAT_1_BLOCK, **data}
    known = {f.name: f for f in fields(GPTConfig)}
    unknown = sorted(data.keys() - known.keys())
    if unknown:
        raise TinyLLMError(f"{path}: unknown field '{unknown[0]}' (a newer tinyllm's model? this "
                           f"tinyllm knows {', '.join(known)})")
    # Every field but the vocabulary's is a params.yaml model key, checked as params.yaml's is.
    keys = {f.name: f for f in fields(ModelConfig)}
    values = {name: coerce_value(f"{path}: '{name}'", data.get(name), f)
              for name, f in keys.items()}
    vocab_size = data.get("vocab_size")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise TinyLLMError(f"{path}: 'vocab_size' must be a positive integer, got {vocab_size!r}")
    config = GPTConfig(vocab_size=vocab_size, **values)
    if config.d_model % config.n_head or (config.positions == "rotary" and config.head_dim % 2):
        raise TinyLLMError(f"{path}: inconsistent architecture {values}")
    return config


def load_weights(path: Path, config: GPTConfig) -> GPT:
    """The GPT of config holding the state_dict at path, read without executing code.

    The file is checked against the config before the model is built, so a damaged config
    cannot make us allocate what it claims.
    """
    if not path.exists():
        raise TinyLLMError(f"model package file missing: {path}")
    expected_bytes = 4 * config.num_parameters()
    if path.stat().st_size > 2 * expected_bytes + (1 << 20):
        raise TinyLLMError(f"{path} is {path.stat().st_size} bytes, far more than a model of "
                           f"this config needs ({expected_bytes}); refusing to load it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = [line.strip() for line in str(exc).splitlines() if "Unsupported global" in line]
        reason = found[0] if found else "not a plain state_dict"
        raise TinyLLMError(f"refusing to load {path}: it holds objects other than tensors "
                           f"({whole_sentences(reason, 160)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise TinyLLMError(f"{path} is truncated or corrupt: {first_line(exc)}") from None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise TinyLLMError(f"{path} does not hold a state_dict of named tensors")
    # Count the values actually stored: an expanded (stride-0) or repeated tensor shows many
    # elements but holds few, and the config must not claim more than the file holds.
    storages = {t.untyped_storage().data_ptr(): t for t in state.values()}
    stored = sum(t.untyped_storage().nbytes() // t.element_size() for t in storages.values())
    if config.num_parameters() > stored:
        raise TinyLLMError(f"{path} does not match config.json: the config needs "
                           f"{config.num_parameters():,} parameters, the file holds {stored:,}")
    model = GPT(config)
    expected = model.state_dict()
    missing, unexpected = expected.keys() - state.keys(), state.keys() - expected.keys()
    if missing or unexpected:
        raise TinyLLMError(f"{path} does not match config.json: missing {sorted(missing)[:3]}, "
                           f"unexpected {sorted(unexpected)[:3]}")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise TinyLLMError(f"{path} does not match config.json: {name} has shape "
                               f"{tuple(state[name].shape)}, config needs {tuple(tensor.shape)}")
    model.load_state_dict(state)
    return model


@dataclass
class LoadedModel:
    """A model ready to generate: the GPT, its tokenizer and what the package says about it."""

    model: GPT
    tokenizer: CharTokenizer
    meta: dict
    path: Path
    source: Any = None  # where load_model found it: a tracking.registry.ResolvedModel

    @property
    def config(self) -> GPTConfig:
        return self.model.config

    def encode_prompt(self, prompt: str) -> Encoded:
        return self.tokenizer.encode_report(prompt)

    def prompt_notes(self, prompt: str) -> list[str]:
        """What the user should know before a prompt is continued: characters the vocabulary
        lacks, and a prompt longer than the context (only its end is seen)."""
        encoded = self.encode_prompt(prompt)
        notes = []
        if encoded.unknown:
            notes.append(describe_unknown(encoded.unknown, self.tokenizer.unknown))
        if len(encoded.ids) > self.config.context_length:
            notes.append(f"the prompt is {len(encoded.ids)} characters long; the model sees "
                         f"only its last {self.config.context_length}")
        return notes

    def stream(self, prompt: str, stop: Sequence[str] = (),
               settings: SamplingConfig | None = None, **sampling) -> Iterator[str]:
        """The continuation piece by piece. sampling: SamplingConfig's fields by name (e.g.
        max_tokens=50, top_p=0.9) on top of settings or the defaults; a bad value raises
        TinyLLMError naming it before anything runs."""
        settings = SamplingConfig.from_values(sampling, settings)
        return stream_text(self.model, self.tokenizer, prompt, settings, stop)

    def generate(self, prompt: str, stop: Sequence[str] = (),
                 settings: SamplingConfig | None = None, **sampling) -> str:
        return "".join(self.stream(prompt, stop, settings, **sampling))

    def compile(self) -> None:
        self.model = compiled_for_generation(self.model)


def _refuse_escape(directory: Path, name: str) -> None:
    """A package file must not be a link to somewhere outside the package directory."""
    path = directory / name
    if path.is_symlink() and not path.resolve().is_relative_to(directory.resolve()):
        raise TinyLLMError(f"{path} points outside the model package ({path.resolve()}); "
                           f"refusing to load it")


def load_package(directory: str | Path, device: str = "cpu") -> LoadedModel:
    directory = current_directory(directory)
    if not directory.is_dir():
        raise TinyLLMError(f"model package directory not found: {directory}")
    for name in (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, META_FILE):
        _refuse_escape(directory, name)
    config = read_config(directory / CONFIG_FILE)
    tokenizer = CharTokenizer.load(directory / TOKENIZER_FILE)
    if tokenizer.vocab_size != config.vocab_size:
        raise TinyLLMError(f"{directory / TOKENIZER_FILE} has {tokenizer.vocab_size} ids but "
                           f"config.json says vocab_size {config.vocab_size}")
    model = load_weights(directory / WEIGHTS_FILE, config)
    meta = _read_json(directory / META_FILE) if (directory / META_FILE).exists() else {}
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, meta=meta, path=directory)

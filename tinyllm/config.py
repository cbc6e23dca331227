"""Typed sections of params.yaml, validated on load with errors that name the offending key.

Every knob of the project lives in params.yaml; each section maps to one dataclass below. A field's
metadata carries its allowed range or choices, so the validation is declared next to the default.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tinyllm.errors import TinyLLMError
from tinyllm.recipes import RECIPE_INPUTS, apply_recipe

DEVICES = ("auto", "cpu", "cuda", "mps")  # where torch runs; auto: CUDA, else MPS, else CPU
RECIPES = ("auto", "none")  # auto: with a time budget, recipes.py fits the knobs to it
OPTIMIZERS = ("adamw", "muon")  # muon: training.muon for the blocks' matrices, Adam for the rest
POSITIONS = ("learned", "rotary")  # the model's position embedding (tinyllm.model)
ACTIVATIONS = ("gelu", "relu2")  # the MLP's activation (tinyllm.model.ACTIVATIONS)


def knob(default: Any, *, min: float | None = None, max: float | None = None,
         choices: tuple | None = None, min_exclusive: bool = False, **about: Any) -> Any:
    """A dataclass field whose allowed values travel with it; about: e.g. help, for surfaces
    derived from the field (CLI options, chat commands)."""
    meta = {"min": min, "max": max, "choices": choices, "min_exclusive": min_exclusive, **about}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    """prepare: which corpus, how it is cleaned and how val/test are held out."""

    corpus: str = knob("data/raw/shakespeare")
    val_fraction: float = knob(0.05, min=0.0, max=0.5, min_exclusive=True)
    test_fraction: float = knob(0.05, min=0.0, max=0.5, min_exclusive=True)
    split_seed: int = knob(1337, min=0)
    drop_stage_directions: bool = knob(False)
    collapse_blank_lines: bool = knob(True)
    unicode_normalization: str = knob("NFC", choices=("none", "NFC", "NFKC"))


@dataclass
class TokenizerConfig:
    """tokenize: what happens to characters the training split never showed."""

    unknown: str = knob("replace", choices=("replace", "drop"))


@dataclass
class ModelConfig:
    """The GPT's shape and block; the vocabulary size comes from the fitted tokenizer."""

    context_length: int = knob(128, min=2, max=65536)
    n_layer: int = knob(4, min=1, max=256)
    n_head: int = knob(4, min=1, max=256)
    d_model: int = knob(128, min=8, max=65536)
    dropout: float = knob(0.0, min=0.0, max=0.9)
    positions: str = knob("rotary", choices=POSITIONS)
    qk_norm: bool = knob(True)
    activation: str = knob("relu2", choices=ACTIVATIONS)


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a signed 64-bit integer
COUNT_MAX = 2**63 - 1  # numpy's int64: the most characters a count can hold


@dataclass
class TrainConfig:
    """train: optimisation, schedule, evaluation cadence, checkpoints and the machine."""

    seed: int = knob(1337, min=0, max=SEED_MAX)
    max_steps: int = knob(820, min=1)
    batch_size: int = knob(32, min=1)
    grad_accum_steps: int = knob(1, min=1)
    optimizer: str = knob("muon", choices=OPTIMIZERS)
    learning_rate: float = knob(3e-3, min=0.0, max=1.0, min_exclusive=True)
    min_lr_fraction: float = knob(0.1, min=0.0, max=1.0)
    warmup_steps: int = knob(100, min=0)  # at most an eighth of the run: training.plan.warmup_for
    weight_decay: float = knob(0.1, min=0.0, max=1.0)
    beta1: float = knob(0.9, min=0.0, max=1.0)
    beta2: float = knob(0.99, min=0.0, max=1.0)
    grad_clip: float = knob(1.0, min=0.0)
    eval_interval: int = knob(250, min=1)
    eval_batches: int = knob(16, min=1)
    checkpoint_interval: int = knob(250, min=1)
    time_budget_minutes: float = knob(0.0, min=0.0)
    recipe: str = knob("auto", choices=RECIPES)
    device: str = knob("auto", choices=DEVICES)
    threads: int = knob(0, min=0, max=1024)
    compile: bool = knob(False)


MAX_TOKENS_CEILING = 100_000  # the most one generation may ask for; a server's cap is lower


@dataclass(frozen=True)
class SamplingConfig:
    """How text is sampled: the one definition of every sampling setting.

    Each field is one setting under one name, its default and its allowed range, checked when a
    SamplingConfig is built (a bad value raises TinyLLMError naming the field). Every surface
    derives from these fields: params.yaml's evaluate section, the CLI options (--max-tokens),
    chat's slash commands (`command`), LoadedModel.generate/stream keywords, the MLflow model's
    params and the server's request fields. `off`: the value that switches a filter off.
    """

    temperature: float = knob(0.8, min=0.0, max=10.0, command="temp",
                              help="Randomness; 0 always picks the most likely character.")
    top_k: int = knob(0, min=0, off=0, command="topk",
                      help="Sample among the K most likely characters; 0 = off.")
    top_p: float = knob(1.0, min=0.0, max=1.0, min_exclusive=True, off=1.0, command="topp",
                        help="Nucleus sampling: the smallest set of characters holding this "
                             "probability mass; 1 = off.")
    min_p: float = knob(0.0, min=0.0, max=1.0, off=0.0, command="minp",
                        help="Drop characters less likely than this fraction of the most likely "
                             "one's probability; 0 = off.")
    max_tokens: int = knob(300, min=1, max=MAX_TOKENS_CEILING, command="tokens",
                           help="Characters to generate per prompt.")
    seed: int = knob(1337, min=0, max=SEED_MAX, command="seed",
                     help="Random seed: the same seed and settings give the same text.")
    frequency_penalty: float = knob(
        0.0, min=-2.0, max=2.0, off=0.0, command="freq",
        help="Lower each character's logit by this much per time it was generated so far "
             "(OpenAI's frequency_penalty; negative: favour repeats); 0 = off.")
    presence_penalty: float = knob(
        0.0, min=-2.0, max=2.0, off=0.0, command="presence",
        help="Lower by this much the logit of every character generated so far at least once "
             "(OpenAI's presence_penalty); 0 = off.")

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def from_values(cls, values: dict, base: SamplingConfig | None = None) -> SamplingConfig:
        """base (or the defaults) with values on top; an unknown name is a TinyLLMError."""
        try:
            _reject_unknown(values, sampling_names(), lambda name: f"unknown sampling setting "
                                                                   f"'{name}'")
        except TinyLLMError as exc:
            exc.key = next(name for name in values if name not in sampling_names())
            raise
        return dataclasses.replace(base or cls(), **values)


def sampling_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SamplingConfig)]


def sampling_knob(name: str, default: Any) -> Any:
    """SamplingConfig's field `name` with another default, for a section that embeds it."""
    return field(default=default, metadata=SamplingConfig.__dataclass_fields__[name].metadata)


@dataclass(frozen=True)
class EvaluateConfig(SamplingConfig):
    """evaluate: split metrics and the fixed-seed samples written next to them.

    It holds SamplingConfig's settings (same names, ranges and checks) with evaluate's own
    default top_p, plus what scoring needs. max_chars caps the characters scored per split (0:
    no cap): a longer split is scored on evenly spaced windows (evaluation.scoring); the default
    corpus's splits (361k and 334k characters) are under it and scored whole.
    """

    top_p: float = sampling_knob("top_p", 0.95)
    batch_size: int = knob(32, min=1)
    max_chars: int = knob(400_000, min=0, max=COUNT_MAX)
    prompts: list = knob(["ROMEO:", "First Citizen:\n", "To be, or not to be"])
    device: str = knob("auto", choices=DEVICES)

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(**{name: getattr(self, name) for name in sampling_names()})


@dataclass
class TrackingConfig:
    """MLflow: whether runs are tracked, in which experiment, and the registry name."""

    enabled: bool = knob(True)
    experiment: str = knob("tinyllm")
    registry_name: str = knob("shakespeare")
    champion_alias: str = knob("champion")


@dataclass
class Params:
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def check(self) -> Params:
        """Cross-field rules that no single key can check on its own."""
        if self.model.d_model % self.model.n_head:
            raise TinyLLMError(
                f"model.d_model ({self.model.d_model}) must be divisible by model.n_head "
                f"({self.model.n_head})", key="model.d_model")
        if self.model.positions == "rotary" and (self.model.d_model // self.model.n_head) % 2:
            raise TinyLLMError(
                f"model.positions rotary turns channels in pairs, so each head's width "
                f"(model.d_model / model.n_head = {self.model.d_model // self.model.n_head}) "
                f"must be even", key="model.positions")
        if self.data.val_fraction + self.data.test_fraction >= 0.9:
            raise TinyLLMError("data.val_fraction + data.test_fraction must leave at least 10% "
                               "of the corpus for training", key="data.val_fraction")
        if not all(isinstance(p, str) and p for p in self.evaluate.prompts):
            raise TinyLLMError("evaluate.prompts must be a list of non-empty strings",
                               key="evaluate.prompts")
        return self

    def flat(self) -> dict[str, Any]:
        """Every key flattened with dots (`train.learning_rate`), e.g. for MLflow params."""
        return {f"{section}.{key}": value
                for section, values in dataclasses.asdict(self).items()
                for key, value in values.items()}


def _reject_unknown(given, known: list[str], describe) -> None:
    """Raise for the first name not in known, suggesting the closest known one."""
    for name in given:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"
            raise TinyLLMError(describe(name) + hint)


def coerce_value(where: str, value: Any, f: dataclasses.Field) -> Any:
    """Check one value against the field's declared type and range; returns the typed value.
    where: how the message names it (a params key, a file's field)."""
    kind = _resolve_type(f.type)
    if kind is bool:
        if not isinstance(value, bool):
            raise TinyLLMError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TinyLLMError(f"{where} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, str):  # PyYAML reads `3e-3` as a string (YAML 1.1); DVC writes it
            try:
                value = float(value)
            except ValueError:
                raise TinyLLMError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise TinyLLMError(f"{where} must be a number, got {value!r}")
        value = float(value)
    elif kind is str:
        if not isinstance(value, str):
            raise TinyLLMError(f"{where} must be a string, got {value!r}")
    elif kind is list and not isinstance(value, list):
        raise TinyLLMError(f"{where} must be a list, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise TinyLLMError(
            f"{where} must be one of {', '.join(map(str, meta['choices']))}; got {value!r}")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and (value < low or (meta.get("min_exclusive") and value == low)):
        relation = ">" if meta.get("min_exclusive") else ">="
        raise TinyLLMError(f"{where} must be {relation} {low}, got {value!r}")
    if high is not None and value > high:
        raise TinyLLMError(f"{where} must be <= {high}, got {value!r}")
    return value


def check_fields(instance: Any, prefix: str = "") -> None:
    """Check (and type, e.g. 1 -> 1.0 for a float) every field of a built section."""
    for f in dataclasses.fields(instance):
        try:
            value = coerce_value(f"{prefix}{f.name}", getattr(instance, f.name), f)
        except TinyLLMError as exc:
            exc.key = f.name
            raise
        object.__setattr__(instance, f.name, value)  # works for frozen dataclasses too


def _resolve_type(annotation: Any) -> type:
    """Field annotations are strings under `from __future__ import annotations`."""
    table = {"int": int, "float": float, "str": str, "bool": bool, "list": list}
    if isinstance(annotation, str):
        return table[annotation]
    if isinstance(annotation, types.GenericAlias):
        return typing.get_origin(annotation)
    return annotation


def build_section(cls: type, name: str, values: Any) -> Any:
    """Build one section dataclass from a mapping, rejecting unknown keys with a did-you-mean."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise TinyLLMError(f"params section '{name}' must be a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _reject_unknown(values, list(fields), lambda key: f"unknown params key '{name}.{key}'")
    typed = {}
    for key, value in values.items():
        try:
            typed[key] = coerce_value(f"{name}.{key}", value, fields[key])
        except TinyLLMError as exc:
            exc.key = f"{name}.{key}"
            raise
    return cls(**typed)


def params_field(key: str) -> dataclasses.Field:
    """The field that declares a params key ("train.max_steps"): its type, default and range."""
    section, name = key.split(".")
    cls = next(f.default_factory for f in dataclasses.fields(Params) if f.name == section)
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def set_keys(raw: dict, values: dict[str, Any]) -> dict:
    """raw, a params.yaml-shaped dict, with dotted keys ({"train.max_steps": 5}) set in it."""
    for key, value in values.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return raw


def params_from_dict(raw: Any, source: str = "params") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise TinyLLMError(f"{source} must be a mapping of sections, got {type(raw).__name__}")
    sections = {f.name: f for f in dataclasses.fields(Params)}
    _reject_unknown(raw, list(sections),
                    lambda name: f"unknown params section '{name}' in {source}")
    built = {name: build_section(f.default_factory, name, raw.get(name))
             for name, f in sections.items()}
    return apply_recipe(Params(**built)).check()


def changed_keys(params: Params, baseline: dict) -> dict[str, Any]:
    """The keys of params whose values differ from baseline's (a params.yaml-shaped dict; {}: the
    defaults), in params.yaml's order. A key a budget's recipe set is no change of its own: the
    budget is."""
    flat = params.flat()
    given = {key: flat[key] for key in RECIPE_INPUTS}
    base = params_from_dict(baseline).flat()
    fitted = params_from_dict(set_keys(copy.deepcopy(baseline), given)).flat()
    return {key: value for key, value in flat.items()
            if value != (base if key in given else fitted)[key]}


def load_params_or_defaults(path: str | Path = "params.yaml") -> Params:
    """params.yaml when there is one (outside a project, e.g. `tinyllm train`), else defaults."""
    return load_params(path) if Path(path).is_file() else Params()


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; every problem is a one-line TinyLLMError naming the key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TinyLLMError(f"params file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TinyLLMError(f"cannot read params file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TinyLLMError(f"malformed YAML in {path}{where}: {problem}") from None
    return params_from_dict(raw, str(path))

"""The four steps of a model's life, each reading what the one before wrote.

DVC's stage scripts (pipeline/) and `tinyllm train` both run these; a Layout says where the files
go. Tracking is optional: with params.tracking.enabled false nothing touches MLflow. Here too is
what `tinyllm train` assembles before the steps (its params, name and checkpoint) and what
`tinyllm restore` puts back after `dvc exp run` removed the model: the CLI only wires and prints.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from tinyllm.config import Params
from tinyllm.corpus import SPLITS, clean_text, load_corpus, split_by_works, split_stats
from tinyllm.errors import TinyLLMError
from tinyllm.io import atomic_write_json, atomic_write_text, current_directory, fingerprint_files

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    """Where each step reads and writes; the defaults are the DVC pipeline's (see dvc.yaml)."""

    root: Path = Path(".")

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    @property
    def validated(self) -> Path:
        return self.root / "data/validated.txt"

    @property
    def prepared(self) -> Path:
        return self.root / "data/prepared"

    @property
    def tokens(self) -> Path:
        return self.root / "data/tokens"

    @property
    def tokenizer(self) -> Path:
        return self.root / "models/tokenizer.json"

    @property
    def model(self) -> Path:
        return self.root / "models/model"

    @property
    def checkpoints(self) -> Path:
        return self.root / "models/checkpoints"

    @property
    def train_dir(self) -> Path:
        return self.root / "models/train"

    @property
    def eval_dir(self) -> Path:
        return self.root / "models/eval"

    @property
    def run_handoff(self) -> Path:
        return self.train_dir / "mlflow_run.json"


def _require(path: Path, step: str) -> Path:
    if not path.exists():
        raise TinyLLMError(f"{path} not found; run the {step} step first (dvc repro)")
    return path


def validate(params: Params, layout: Layout) -> None:
    """Check params and corpus before any stage that removes outputs runs.

    DVC deletes a stage's outputs just before running it, so a value refused inside that stage
    would already have cost its outputs. This step comes first and every other step depends on
    its stamp, so a bad params.yaml (validated as it was loaded) or corpus stops `dvc repro`
    here. The stamp never changes, so passing validation re-runs nothing downstream.
    """
    load_corpus(params.data.corpus)
    atomic_write_text(layout.validated, "params.yaml and data.corpus passed validation\n")
    log.info("validate: params.yaml and the corpus %s are usable", params.data.corpus)


def prepare(params: Params, layout: Layout) -> dict:
    """Raw corpus -> cleaned train/val/test text (val/test are whole works) + stats.json."""
    cfg = params.data
    documents = load_corpus(cfg.corpus)
    for doc in documents:
        doc.text = clean_text(doc.text, normalization=cfg.unicode_normalization,
                              drop_stage_directions=cfg.drop_stage_directions,
                              collapse_blank_lines=cfg.collapse_blank_lines)
    texts, works = split_by_works(documents, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    for split, text in texts.items():
        atomic_write_text(layout.prepared / f"{split}.txt", text)
    stats = {
        "corpus": cfg.corpus,
        "documents": len(documents),
        "split_by": "works" if len(documents) >= 3 else "contiguous slices",
        "encodings": dict(Counter(doc.encoding for doc in documents)),
        "splits": {split: {**split_stats(text), "works": works[split]}
                   for split, text in texts.items()},
    }
    atomic_write_json(layout.prepared / "stats.json", stats)
    sizes = ", ".join(f"{s} {len(t):,}" for s, t in texts.items())
    log.info("prepare: %d documents -> %s characters", len(documents), sizes)
    return stats


def tokenize(params: Params, layout: Layout) -> dict:
    """Fit the tokenizer on train, encode every split to token files, count unknown chars."""
    from tinyllm.tokenizer import CharTokenizer, save_tokens

    texts = {s: _require(layout.prepared / f"{s}.txt", "prepare").read_text(encoding="utf-8")
             for s in SPLITS}
    tokenizer = CharTokenizer.fit(texts["train"], unknown=params.tokenizer.unknown)
    stats = {"vocab_size": tokenizer.vocab_size, "unknown_policy": tokenizer.unknown,
             "splits": {}}
    for split, text in texts.items():
        encoded = tokenizer.encode_report(text)
        save_tokens(layout.tokens / f"{split}.bin", encoded.ids)
        stats["splits"][split] = {"tokens": len(encoded.ids),
                                  "unknown_characters": sum(encoded.unknown.values()),
                                  "unknown_distinct": "".join(sorted(encoded.unknown))}
    tokenizer.save(layout.tokenizer)
    atomic_write_json(layout.tokens / "stats.json", stats)
    unknown = {s: v["unknown_characters"] for s, v in stats["splits"].items() if s != "train"}
    log.info("tokenize: vocabulary of %d ids; characters outside it: %s",
             tokenizer.vocab_size, unknown)
    return stats


def train(params: Params, layout: Layout, tracking_uri: str | None = None, *,
          callbacks: tuple = (), **fit_options):
    """Train (resuming this run's checkpoint if there is one) and write the model package.

    callbacks and fit_options go to tinyllm.training.loop.fit besides the pipeline's own (a sweep's
    plan and simulated clock).

    With tracking on, the MLflow store is checked before any work, and the run id is handed to
    evaluate through layout.run_handoff. Under torchrun every rank trains; rank 0 alone tracks
    and writes.
    """
    from tinyllm.model import GPTConfig
    from tinyllm.tracking.runs import run_name, training_run
    from tinyllm.training import distributed
    from tinyllm.training.batches import check_batch_split
    from tinyllm.training.loop import fit

    tokenizer, train_tokens, val_tokens, fingerprint = _training_data(layout)
    model_cfg = GPTConfig.from_params(params.model, tokenizer.vocab_size)
    check_batch_split(params.train.batch_size)  # before an MLflow run is started for nothing
    main = distributed.is_main()
    facts = _run_facts(params, model_cfg, tokenizer.vocab_size, fingerprint)
    name = run_name(params.tracking.registry_name, params)
    with training_run(params, name, facts, tracking_uri, enabled=main) as run:
        _log_inputs(run, params, layout)
        callbacks = [*_pipeline_callbacks(run, params, layout, tokenizer),
                     *callbacks] if main else []
        with run.system_metrics():
            result = fit(model_cfg, params.train, train_tokens, val_tokens,
                         checkpoint_dir=layout.checkpoints, data_fingerprint=fingerprint,
                         callbacks=callbacks, **fit_options)
        if not main:
            return result
        summary = _record_result(run, result, layout, tokenizer, fingerprint)
    _log_outcome(result, summary, layout)
    return result


def _training_data(layout: Layout):
    """(tokenizer, train tokens, validation tokens, their fingerprint) as tokenize wrote them."""
    from tinyllm.tokenizer import CharTokenizer, load_tokens

    tokenizer = CharTokenizer.load(_require(layout.tokenizer, "tokenize"))
    token_files = [layout.tokens / "train.bin", layout.tokens / "val.bin"]
    train_tokens, val_tokens = (load_tokens(_require(p, "tokenize"), tokenizer)
                                for p in token_files)
    return (tokenizer, train_tokens, val_tokens,
            fingerprint_files([layout.tokenizer, *token_files]))


def _run_facts(params: Params, model_cfg, vocab_size: int, fingerprint: str) -> dict:
    """What the run is besides its params: data, model size, device and library versions."""
    from tinyllm.devices import select_device
    from tinyllm.package import runtime_versions

    return {"vocab_size": vocab_size, "data_fingerprint": fingerprint,
            "parameters": model_cfg.num_parameters(),
            "device": str(select_device(params.train.device, key="train.device")),
            **{f"version.{k}": v for k, v in runtime_versions().items()}}


def _log_inputs(run, params: Params, layout: Layout) -> None:
    """The tokenizer, the data steps' stats and the text splits, so the run shows its inputs."""
    run.log_artifacts([layout.tokenizer], "data")
    run.log_artifacts([layout.prepared / "stats.json"], "data/prepare")
    run.log_artifacts([layout.tokens / "stats.json"], "data/tokenize")
    run.log_datasets({"train": layout.prepared / "train.txt",
                      "validation": layout.prepared / "val.txt"},
                     Path(params.data.corpus).stem)


def _pipeline_callbacks(run, params: Params, layout: Layout, tokenizer) -> list:
    """The pipeline's own watchers of fit: progress, live curves, the run's, samples."""
    from tinyllm.training.outputs import LiveCurves
    from tinyllm.training.progress import ProgressReporter
    from tinyllm.training.samples import TrainingSamples

    return [ProgressReporter(), LiveCurves(layout.train_dir), *run.callbacks,
            TrainingSamples(layout.train_dir, tokenizer, params.evaluate.prompts,
                            run.log_samples)]


def _record_result(run, result, layout: Layout, tokenizer, fingerprint: str) -> dict:
    """Write the history and the model package, log the summary to the run and hand the run
    to evaluate; the summary."""
    from tinyllm.package import save_package
    from tinyllm.training.outputs import SUMMARY_FILE, summary_of, write_history
    from tinyllm.training.samples import SAMPLES_FILE

    summary = summary_of(result, fingerprint)
    write_history(layout.train_dir, result.history, summary)
    save_package(layout.model, result.model, tokenizer, meta=summary)
    run.log_metrics({f"train.{k}": v for k, v in summary.items()
                     if isinstance(v, (int, float))})
    run.set_tag("tinyllm.stopped_by", summary["stopped_by"])
    # summary.json holds the realised plan (plan_segments): the run replays from it.
    run.log_artifacts([layout.train_dir / SAMPLES_FILE, layout.train_dir / SUMMARY_FILE],
                      "train")
    run.write_handoff(layout.run_handoff)
    return summary


def _log_outcome(result, summary: dict, layout: Layout) -> None:
    """How far training went against its plan, and how the plan moved on the way."""
    log.info("train: %d of %d planned steps (%s), best val loss %.4f at step %d, %.0f tokens/s "
             "-> %s", result.steps, result.plan.steps, result.stopped_by, result.best_val_loss,
             result.best_step, summary["tokens_per_sec"], layout.model)
    if summary["replans"] or summary["unused_budget_seconds"]:
        log.info("train: the plan of %d steps moved %d time(s) with the pace and validation; "
                 "%.1f of the budget's minutes left unused", summary["first_planned_steps"],
                 summary["replans"], summary["unused_budget_seconds"] / 60)


def evaluate(params: Params, layout: Layout, tracking_uri: str | None = None) -> dict:
    """Whole-split metrics, samples and the loss curve; with tracking, log and register."""
    from tinyllm.devices import select_device
    from tinyllm.evaluation.report import loss_curve_png, samples_markdown
    from tinyllm.evaluation.scoring import split_metrics
    from tinyllm.package import load_package
    from tinyllm.tokenizer import load_tokens
    from tinyllm.tracking.runs import EVAL_METRIC_PREFIX, evaluation_run, run_name

    cfg, tracked = params.evaluate, params.tracking
    device = select_device(cfg.device, key="evaluate.device")
    name = run_name(tracked.registry_name, params)
    with evaluation_run(params, layout.run_handoff, name, tracking_uri) as run:
        # A package swap killed halfway leaves the whole old package aside: evaluate reads it.
        loaded = load_package(_require(current_directory(layout.model), "train"), str(device))
        metrics = {split: split_metrics(loaded.model, load_tokens(
            _require(layout.tokens / f"{split}.bin", "tokenize"), loaded.tokenizer),
            cfg.batch_size) for split in ("val", "test")}
        settings = cfg.sampling()
        samples = {prompt: loaded.generate(prompt, **asdict(settings))
                   for prompt in cfg.prompts}
        files = [layout.eval_dir / "samples.md", layout.eval_dir / "loss_curve.png",
                 layout.eval_dir / "metrics.json"]
        atomic_write_text(files[0], samples_markdown(samples, settings))
        loss_curve_png(layout.train_dir, files[1])
        atomic_write_json(files[2], metrics)
        test = metrics["test"]
        log.info("evaluate: test loss %.4f nats/char, %.4f bits/char, perplexity %.3f",
                 test["loss"], test["bits_per_char"], test["perplexity"])
        run.log_metrics({f"{EVAL_METRIC_PREFIX}{split}_{key}": value
                         for split, values in metrics.items()
                         for key, value in values.items() if key != "characters"})
        run.log_artifacts(files, "eval")
        registration = run.register(layout.model, tracked.registry_name, test["loss"],
                                    test["bits_per_char"], loaded.meta.get("data_fingerprint", ""),
                                    tracked.champion_alias)
    if registration:
        verb = "registered" if registration.created else "already registered as"
        log.info("evaluate: %s models:/%s/%s%s", verb, registration.name, registration.version,
                 f" (@{tracked.champion_alias})" if registration.champion else "")
        log.info("evaluate: runs at %s", run.runs_page())
        log.info("evaluate: the model at %s", run.ui_page(
            f"models/{registration.name}/versions/{registration.version}"))
        metrics["registered"] = {"name": registration.name, "version": registration.version}
    return metrics


def build(params: Params, layout: Layout, tracking_uri: str | None = None, *,
          through=evaluate):
    """Prepare -> tokenize -> train -> evaluate in one call, as `dvc repro` runs them; stops
    after `through` (e.g. tokenize: the data alone) and returns that step's result.

    For `tinyllm train`, scripts and tests: one place says which steps make a model, in order.
    """
    steps = (prepare, tokenize, train, evaluate)
    if through not in steps:
        raise ValueError(f"through must be one of the workflow's steps, got {through!r}")
    for step in steps[:steps.index(through) + 1]:
        tracked = step in (train, evaluate)
        result = step(params, layout, tracking_uri) if tracked else step(params, layout)
    return result


# --- `tinyllm train`: a model from any text, outside DVC ---------------------------------------

def check_data_path(data_path: str) -> None:
    """A missing data path is an error that lists the text files under ./data/ instead."""
    if Path(data_path).exists():
        return
    from tinyllm.corpus import text_files_under

    found = text_files_under(Path("data")) if Path("data").is_dir() else []
    if found:
        more = f" and {len(found) - 10} more" if len(found) > 10 else ""
        hint = f"text files under ./data/: {', '.join(map(str, found[:10]))}{more}"
    else:
        hint = "no text files under ./data/ either"
    raise TinyLLMError(f"data file not found: {data_path}; {hint}")


def model_name_for(data_path: str) -> str:
    """my_text.txt -> my_text; a directory -> its name; odd characters become '_'."""
    path = Path(data_path).resolve()
    stem = path.name if path.is_dir() else path.stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip("._-") or "model"


def adhoc_params(data_path: str, name: str, register: bool, overrides: dict) -> Params:
    """./params.yaml (or the built-in defaults) training on data_path under the registry name
    `name`, tracked if `register`, with overrides ({params key: value}) on top, validated.

    data.val_fraction sets test_fraction too: one option holds out the same share for each.
    """
    from tinyllm.config import load_params_or_defaults, params_from_dict, set_keys

    raw = asdict(load_params_or_defaults())
    raw["data"]["corpus"] = data_path
    raw["tracking"]["registry_name"] = name
    raw["tracking"]["enabled"] = register
    set_keys(raw, overrides)
    if "data.val_fraction" in overrides:
        raw["data"]["test_fraction"] = overrides["data.val_fraction"]
    return params_from_dict(raw, "params.yaml and options")


def set_aside_checkpoint(checkpoints: Path, resume: bool) -> Path | None:
    """--resume needs the checkpoint; a fresh start moves it aside (never deletes it) and
    returns where to."""
    from tinyllm.io import set_aside
    from tinyllm.training.state import CHECKPOINT_FILE

    checkpoint = checkpoints / CHECKPOINT_FILE
    if resume:
        if not checkpoint.exists():
            raise TinyLLMError(f"--resume: no checkpoint at {checkpoint}; drop --resume to start "
                               "afresh (or check --output-dir/--name)")
        return None
    return set_aside(checkpoint) if checkpoint.exists() else None


def run_stage(step) -> None:
    """Entry point of a DVC stage script: params.yaml in, the default Layout, clean errors."""
    from tinyllm.config import load_params
    from tinyllm.errors import exit_on_error
    from tinyllm.logs import setup_logging

    def main():
        setup_logging()
        try:
            step(load_params("params.yaml"), Layout())
        except TinyLLMError as exc:  # validate refuses before any stage removes outputs
            hint = removed_model_hint(Layout()) if step is validate else None
            if hint is None:
                raise
            raise TinyLLMError(f"{exc}; {hint}") from None

    exit_on_error(main)


RESTORE_COMMAND = "tinyllm restore"


@dataclass(frozen=True)
class Restored:
    uri: str  # the model URI restored
    version: str | None  # its registered version, when it names one
    paths: tuple[Path, ...]  # what was written: the model package, and the run handoff if new


def restore(model_uri: str | None, layout: Layout, tracking_uri: str | None = None) -> Restored:
    """Write layout.model (and layout.run_handoff, for evaluate) back from the MLflow registry,
    after `dvc exp run` deleted them (removed_model_hint). Never over an existing model.

    model_uri defaults to models:/NAME/latest, NAME being tracking.registry_name of params.yaml.
    """
    from tinyllm.io import replace_directory, staging_directory
    from tinyllm.tracking.registry import resolve_model_uri
    from tinyllm.tracking.runs import TrackedRun
    from tinyllm.tracking.store import Store

    if layout.model.exists():
        raise TinyLLMError(f"{layout.model} exists; move it aside to restore another model")
    uri = model_uri or f"models:/{_registry_name(layout.root / 'params.yaml')}/latest"
    store = Store(tracking_uri)
    model = resolve_model_uri(uri, store)
    staging = staging_directory(layout.model)
    shutil.copytree(model.path, staging, dirs_exist_ok=True)
    replace_directory(staging, layout.model)
    paths = [layout.model]
    if model.run_id and not layout.run_handoff.exists():
        run = store.client.get_run(model.run_id)
        experiment = store.client.get_experiment(run.info.experiment_id).name
        TrackedRun(store, model.run_id, experiment).write_handoff(layout.run_handoff)
        paths.append(layout.run_handoff)
    return Restored(uri, model.version, tuple(paths))


def _registry_name(params_file: Path) -> str:
    """tracking.registry_name of params.yaml, read leniently: after a refused `dvc exp run`
    the file still holds the refused value, which must not stop the restore."""
    import yaml

    from tinyllm.config import TrackingConfig

    try:
        return str(yaml.safe_load(params_file.read_text("utf-8"))["tracking"]["registry_name"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return TrackingConfig.registry_name


def removed_model_hint(layout: Layout) -> str | None:
    """Why the model package is gone, when DVC removed it, and the command that brings it back.

    `dvc exp run` checks out dvc.lock's outputs before any stage runs, and deletes an output
    whose locked version its cache lacks (a dvc.lock from git that another machine made), so a
    refused experiment can leave a pipeline that ran here without models/model. The model is
    still registered in MLflow.
    """
    lock, cache = layout.root / "dvc.lock", layout.root / ".dvc/cache"
    named = f"path: {layout.model.relative_to(layout.root).as_posix()}\n"
    if layout.model.exists() or not lock.is_file() or named not in lock.read_text("utf-8"):
        return None
    if not cache.is_dir() or not any(cache.iterdir()):  # nothing ran here: nothing was lost
        return None
    return (f"DVC removed {layout.model.relative_to(layout.root)} (dvc.lock names a version its "
            f"cache lacks); `{RESTORE_COMMAND}` writes the latest registered model back")

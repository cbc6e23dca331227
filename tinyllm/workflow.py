"""The steps of a model's life, each reading what the one before wrote.

DVC's stage scripts (pipeline/) and `tinyllm train` both run these; a Layout (layout.py) says where
the files go. Tracking is optional: with params.tracking.enabled false nothing touches MLflow.
Only what a stage runs lives here: every stage depends on this file, so `tinyllm train`'s own
assembly is in adhoc_training.py and `tinyllm restore` in restore.py.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from tinyllm.config import Params
from tinyllm.corpus import (
    SPLITS,
    TEST,
    TRAIN,
    VAL,
    clean_text,
    load_corpus,
    split_by_works,
    split_stats,
)
from tinyllm.errors import TinyLLMError
from tinyllm.io import atomic_write_json, atomic_write_text, current_directory, fingerprint_files
from tinyllm.layout import Layout

log = logging.getLogger(__name__)


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
        atomic_write_text(layout.prepared_text(split), text)
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

    texts = {s: _require(layout.prepared_text(s), "prepare").read_text(encoding="utf-8")
             for s in SPLITS}
    tokenizer = CharTokenizer.fit(texts[TRAIN], unknown=params.tokenizer.unknown)
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
    unknown = {s: v["unknown_characters"] for s, v in stats["splits"].items() if s != TRAIN}
    log.info("tokenize: vocabulary of %d ids; characters outside it: %s",
             tokenizer.vocab_size, unknown)
    return stats


def train(params: Params, layout: Layout, tracking_uri: str | None = None, *,
          callbacks: tuple = (), **fit_options):
    """Train (resuming an interrupted run's checkpoint if there is one) and write the model
    package.

    callbacks and fit_options go to tinyllm.training.loop.fit besides the pipeline's own (a sweep's
    plan and simulated clock).

    With tracking on, the MLflow store is checked before any work; a resume continues the MLflow
    run its checkpoint names, and the run id is handed to evaluate through layout.run_handoff.
    Under torchrun every rank trains; rank 0 alone tracks and writes.
    """
    from tinyllm.model import GPTConfig
    from tinyllm.tracking.runs import run_name, training_run
    from tinyllm.training import distributed
    from tinyllm.training.batches import check_batch_split
    from tinyllm.training.loop import fit
    from tinyllm.training.state import CHECKPOINT_FILE, checkpoint_run_id, run_fingerprint

    tokenizer, train_tokens, val_tokens, fingerprint = _training_data(layout)
    model_cfg = GPTConfig.from_params(params.model, tokenizer.vocab_size)
    check_batch_split(params.train.batch_size)  # before an MLflow run is started for nothing
    main = distributed.is_main()
    facts = _run_facts(params, model_cfg, tokenizer.vocab_size, fingerprint)
    interrupted = checkpoint_run_id(layout.checkpoints / CHECKPOINT_FILE,
                                    run_fingerprint(model_cfg, params.train, fingerprint))
    with training_run(params, run_name(params), facts, tracking_uri, enabled=main,
                      resume=interrupted) as run:
        _log_inputs(run, params, layout)
        callbacks = [*_pipeline_callbacks(run, params, layout, tokenizer),
                     *callbacks] if main else []
        with run.system_metrics():
            result = fit(model_cfg, params.train, train_tokens, val_tokens,
                         checkpoint_dir=layout.checkpoints, data_fingerprint=fingerprint,
                         callbacks=callbacks, run_id=run.id, **fit_options)
        if not main:
            return result
        summary = _record_result(run, result, layout, tokenizer, fingerprint)
    _log_outcome(result, summary, layout)
    return result


def _training_data(layout: Layout):
    """(tokenizer, train tokens, validation tokens, their fingerprint) as tokenize wrote them."""
    from tinyllm.tokenizer import CharTokenizer, load_tokens

    tokenizer = CharTokenizer.load(_require(layout.tokenizer, "tokenize"))
    token_files = [layout.tokens / f"{TRAIN}.bin", layout.tokens / f"{VAL}.bin"]
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
    run.log_datasets({"train": layout.prepared_text(TRAIN),
                      "validation": layout.prepared_text(VAL)},
                     Path(params.data.corpus).stem)


def _pipeline_callbacks(run, params: Params, layout: Layout, tokenizer) -> list:
    """The pipeline's own watchers of fit: progress, live curves, samples, the run's. The
    samples of a step reach the run before its metrics: a process killed between the two leaves
    a step the resume logs again, not a step's samples missing (StepLogger.logged_through)."""
    from tinyllm.training.outputs import LiveCurves
    from tinyllm.training.progress import ProgressReporter
    from tinyllm.training.samples import TrainingSamples

    return [ProgressReporter(), LiveCurves(layout.train_dir),
            TrainingSamples(layout.train_dir, tokenizer, params.evaluate.prompts,
                            run.log_samples), *run.callbacks]


def _record_result(run, result, layout: Layout, tokenizer, fingerprint: str) -> dict:
    """Write the history and the model package, log the summary to the run and hand the run
    to evaluate; the summary."""
    from tinyllm.package import save_package
    from tinyllm.training.outputs import SUMMARY_FILE, summary_of, write_history
    from tinyllm.training.samples import SAMPLES_FILE

    summary = summary_of(result, fingerprint)
    write_history(layout.train_dir, result.history, summary)
    save_package(layout.model, result.model, tokenizer, meta=summary)
    # Single values are tags (tinyllm.steps, tinyllm.stopped_by, ...), not one-point charts: the
    # run page's charts are the curves and the evaluation's scores.
    run.set_tags({f"tinyllm.{k}": v for k, v in summary.items() if not isinstance(v, list)})
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
    """Split metrics (of every character, or of a sample past evaluate.max_chars), samples and
    the loss curve; with tracking, log and register."""
    from tinyllm.devices import select_device
    from tinyllm.evaluation.report import dvc_metrics, loss_curve_png, samples_markdown
    from tinyllm.evaluation.scoring import describe_loss
    from tinyllm.package import load_package
    from tinyllm.tracking.runs import eval_metric, evaluation_run, run_name

    cfg, tracked = params.evaluate, params.tracking
    device = select_device(cfg.device, key="evaluate.device")
    with evaluation_run(params, layout.run_handoff, run_name(params), tracking_uri) as run:
        # A package swap killed halfway leaves the whole old package aside: evaluate reads it.
        loaded = load_package(_require(current_directory(layout.model), "train"), str(device))
        metrics = {split: _score(loaded, layout, split, cfg) for split in (VAL, TEST)}
        settings = cfg.sampling()
        samples = _samples(loaded, cfg.prompts, settings)
        files = [layout.eval_dir / "samples.md", layout.eval_dir / "loss_curve.png",
                 layout.eval_metrics]
        atomic_write_text(files[0], samples_markdown(samples, settings))
        loss_curve_png(layout.train_dir, files[1])
        atomic_write_json(files[2], dvc_metrics(metrics))
        test = metrics[TEST]
        log.info("evaluate: test loss %s, %.4f bits/char, perplexity %.3f", describe_loss(test),
                 test["bits_per_char"], test["perplexity"])
        run.log_metrics({eval_metric(split, key): value
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


def _score(loaded, layout: Layout, split: str, cfg) -> dict:
    """One split's metrics, with progress: every character, or evenly spaced windows of a split
    longer than evaluate.max_chars."""
    from tinyllm.evaluation.scoring import split_metrics
    from tinyllm.progress import Progress
    from tinyllm.tokenizer import load_tokens

    tokens = load_tokens(_require(layout.tokens / f"{split}.bin", "tokenize"), loaded.tokenizer)
    progress = Progress(f"evaluate: scoring {split}", "characters")
    scores = split_metrics(loaded.model, tokens, cfg.batch_size, cfg.max_chars, progress)
    progress.finish(f" of {len(tokens) - 1:,}, evenly spaced (evaluate.max_chars "
                    f"{cfg.max_chars:,})" if "loss_ci95" in scores else " (every character)")
    return scores


def _samples(loaded, prompts: list[str], settings) -> dict[str, str]:
    """The evaluate prompts' continuations, with progress."""
    from tinyllm.progress import Progress

    progress, samples = Progress("evaluate: sampling", "characters"), {}
    for prompt in prompts:
        samples[prompt] = loaded.generate(prompt, **asdict(settings))
        progress(progress.done + len(samples[prompt]), len(prompts) * settings.max_tokens)
    progress.finish(f" ({len(prompts)} prompt(s))")
    return samples


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

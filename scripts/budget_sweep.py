"""Test loss against training minutes: the sweep behind tinyllm/recipes.py and
docs/results.md.

    python scripts/budget_sweep.py                          # budgets 1 2 5 10, the auto recipes
    python scripts/budget_sweep.py --budgets 2 --variant lr5e-3:train.learning_rate=5e-3
    python scripts/budget_sweep.py --tokens-per-sec 34000   # plan steps from a quiet rate
    python scripts/budget_sweep.py --budgets 2 --slowdown 2 # 2x slower after the calibration
    python scripts/budget_sweep.py --budgets 2 10 --seeds 1337 1338 1339  # three train.seeds

Each run trains on the project's default split (params.yaml's data section, prepared once) with
`train.time_budget_minutes` set to the budget, exactly as `dvc exp run -S
train.time_budget_minutes=N` would, and scores every character of the test split. A busy machine
plans fewer steps than a quiet one; --tokens-per-sec R plans each run's steps as a machine that
trains at R tokens/s would, and runs it on a clock that advances as that machine's would (each
step and evaluation by its time there): the re-plans, the data-limited stop and the losses are
that machine's however long the runs take here. --params names another corpus (its data
section); give each corpus its own --work. Prints a markdown table and appends one JSON line a
run to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import sys
import time
from pathlib import Path

from tinyllm import workflow
from tinyllm.config import load_params, params_from_dict, set_keys
from tinyllm.errors import exit_on_error
from tinyllm.evaluation.scoring import split_metrics
from tinyllm.package import load_package
from tinyllm.tokenizer import CharTokenizer, load_tokens
from tinyllm.training import batches
from tinyllm.training.plan import StepPlan

# What a run spends besides its steps when planning from a rate: building the model and the
# calibration, in seconds (measured on the 2-core CPU).
START_UP_SEC = 1.5


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value -> (NAME, {key: value}) with YAML-typed values."""
    import yaml

    name, _, settings = text.partition(":")
    pairs = (item.split("=", 1) for item in settings.split(",") if item)
    return name, {key: yaml.safe_load(value) for key, value in pairs}


def budget_params(base: dict, minutes: float, overrides: dict, seed: int):
    """Validated params for one run: the auto recipe for the budget and train.seed, with the
    variant on top."""
    raw = json.loads(json.dumps(base))
    raw["train"].update(time_budget_minutes=minutes, recipe="auto", seed=seed)
    params = params_from_dict(raw)
    if overrides:  # a variant: the recipe's values with some changed, taken as given
        params = params_from_dict(set_keys({}, {**params.flat(), **overrides,
                                                "train.recipe": "none"}))
    return params


class PacedClock:
    """A run's clock as a machine training at tokens_per_sec would read it: each step advances
    it by a step's time, each evaluation by an evaluation's. Passed to fit with the plan that
    machine's calibration would make, so the run re-plans, stalls and stops as it would there.
    With a slowdown, that machine turns that many times slower once its calibration is done."""

    def __init__(self, params, tokens_per_sec: float, train_tokens: int, slowdown: float = 1.0):
        train, model = params.train, params.model
        tokens_per_step = batches.tokens_per_step(train, model.context_length)
        step_sec = tokens_per_step / tokens_per_sec
        eval_sec = train.eval_batches * train.batch_size * model.context_length / (
            3 * tokens_per_sec)
        self.plan = StepPlan.for_budget(train, START_UP_SEC, step_sec, eval_sec,
                                        epoch_steps=train_tokens / tokens_per_step)
        self.step_sec, self.eval_sec = slowdown * step_sec, slowdown * eval_sec
        self.now = None

    def __call__(self, metrics=None) -> float:
        """The time (as a clock); called with a step's metrics (as a callback), advances it.
        The run's first reading is 0, its start; the start-up the plan counted follows it."""
        if self.now is None:
            self.now = START_UP_SEC
            return 0.0
        if metrics is not None:
            self.now += self.step_sec + (self.eval_sec if metrics.val_loss is not None else 0)
        return self.now


def finite_number(low: float, inclusive: bool, name: str):
    """An argparse type: a finite number above low (or from low, if inclusive), so a bad value
    is argparse's one error line."""
    def parse(text: str) -> float:
        value = float(text)
        if not ((low <= value) if inclusive else (low < value)) or value == math.inf:
            raise argparse.ArgumentTypeError(
                f"must be a number {'>=' if inclusive else '>'} {low:g}, got {text}")
        return value

    parse.__name__ = name  # argparse names the type in "invalid NAME value: ..."
    return parse


slowdown_factor = finite_number(1, inclusive=True, name="slowdown factor")  # --slowdown
positive = finite_number(0, inclusive=False, name="positive number")  # --budgets, rates


class Slowdown:
    """A callback that sleeps (factor - 1) times each step's own time: a machine that turns that
    many times slower once the calibration is done (callbacks are not called during it)."""

    def __init__(self, params, factor: float):
        train, model = params.train, params.model
        self.tokens_per_step = batches.tokens_per_step(train, model.context_length)
        self.factor = factor

    def __call__(self, metrics) -> None:
        time.sleep((self.factor - 1) * self.tokens_per_step / metrics.tokens_per_sec)


def one_run(params, data: workflow.Layout, root: Path, tokens_per_sec: float | None,
            slowdown: float = 1.0) -> dict:
    layout = workflow.Layout(root)
    for name in ("tokens", "tokenizer"):  # share the prepared data
        target = getattr(layout, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(getattr(data, name).resolve())
    paced = {}
    if tokens_per_sec:
        train = load_tokens(layout.tokens / "train.bin", CharTokenizer.load(layout.tokenizer))
        clock = PacedClock(params, tokens_per_sec, len(train), slowdown)
        paced = {"plan": clock.plan, "clock": clock, "callbacks": (clock,)}
    elif slowdown != 1:
        paced = {"callbacks": (Slowdown(params, slowdown),)}
    started = time.monotonic()
    result = workflow.train(params, layout, **paced)
    loaded = load_package(layout.model)
    test = split_metrics(loaded.model, load_tokens(layout.tokens / "test.bin", loaded.tokenizer),
                         params.evaluate.batch_size)
    evaluated = [h["val_loss"] for h in result.history if h["val_loss"] is not None]
    return {"planned_steps": result.plan.segments[0][2], "steps": result.steps,
            "stopped_by": result.stopped_by, "train_seconds": round(result.elapsed_sec, 1),
            "unused_seconds": round(max(0.0, result.plan.budget_sec - result.elapsed_sec), 1),
            "wall_seconds": round(time.monotonic() - started, 1),
            "best_val_loss": round(min(evaluated), 4), "last_val_loss": round(evaluated[-1], 4),
            "best_step": result.best_step, "last_evaluated": result.history[-1]["val_loss"]
            is not None, "last_lr_over_floor": round(result.history[-1]["lr"] / (
                params.train.learning_rate * params.train.min_lr_fraction), 3),
            "replans": len(result.plan.segments) - 1,
            "test_loss": round(test["loss"], 4), "test_bits_per_char": round(
                test["bits_per_char"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=positive, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,...",
                        help="also run the recipe with these keys changed (repeatable)")
    parser.add_argument("--no-auto", action="store_true", help="run only the variants")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="run each budget and variant under each train.seed (default: "
                        "params.yaml's)")
    parser.add_argument("--tokens-per-sec", type=positive,
                        help="plan steps for a machine training at this rate, not the clock")
    parser.add_argument("--slowdown", type=slowdown_factor, default=1.0, metavar="FACTOR",
                        help="train FACTOR times slower after the calibration (a sleep a "
                        "step; with --tokens-per-sec, that machine's clock slows instead)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="the params whose data section names the corpus and its split")
    parser.add_argument("--work", type=Path, default=Path("runs/budget_sweep"))
    parser.add_argument("--out", type=Path, default=Path("runs/budget_sweep/results.jsonl"))
    args = parser.parse_args()

    from tinyllm.logs import setup_logging

    setup_logging()
    project = load_params(args.params)
    base = {section: dataclasses.asdict(getattr(project, section))
            for section in ("data", "tokenizer", "model", "train", "evaluate")}
    base["tracking"] = {"enabled": False}
    variants = ([] if args.no_auto else [("auto", {})]) + [parse_variant(v) for v in args.variant]
    runs = list(itertools.product(args.budgets, variants, args.seeds or [project.train.seed]))
    for minutes, (_, overrides), seed in runs:  # a refused value stops before any work
        budget_params(base, minutes, overrides, seed)
    data = workflow.Layout(args.work / "data")
    if not (data.tokens / "test.bin").exists():
        workflow.build(project, data, through=workflow.tokenize)
    rows = []
    for minutes, (name, overrides), seed in runs:
        params = budget_params(base, minutes, overrides, seed)
        run = f"{name}-{minutes:g}min" + (f"-seed{seed}" if args.seeds else "")
        row = {"budget_minutes": minutes, "recipe": name, "seed": seed,
               "corpus": project.data.corpus, "tokens_per_sec_assumed": args.tokens_per_sec,
               **one_run(params, data, args.work / run, args.tokens_per_sec, args.slowdown),
               "slowdown": args.slowdown}
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), file=sys.stderr, flush=True)
    print("| budget (min) | recipe | seed | planned steps | steps | stopped by | unused (min) "
          "| best val | last val | test loss | test bits/char |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget_minutes']:g} | {r['recipe']} | {r['seed']} | {r['planned_steps']} "
              f"| {r['steps']} "
              f"| {r['stopped_by']} | {r['unused_seconds'] / 60:.1f} | {r['best_val_loss']:.4f} "
              f"| {r['last_val_loss']:.4f} | {r['test_loss']:.4f} "
              f"| {r['test_bits_per_char']:.4f} |")


if __name__ == "__main__":
    exit_on_error(main)

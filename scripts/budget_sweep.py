"""Test loss against training minutes: the sweep behind tinyllm/recipes.py and the README table.

    python scripts/budget_sweep.py                          # budgets 1 2 5 10, the auto recipes
    python scripts/budget_sweep.py --budgets 2 --variant lr5e-3:train.learning_rate=5e-3
    python scripts/budget_sweep.py --tokens-per-sec 34000   # plan steps from a quiet rate

Each run trains on the project's default split (params.yaml's data section, prepared once) with
`train.time_budget_minutes` set to the budget, exactly as `dvc exp run -S
train.time_budget_minutes=N` would, and scores every character of the test split. A busy machine
plans fewer steps than a quiet one; --tokens-per-sec R plans each run's steps as a machine that
trains at R tokens/s would (the same StepPlan, a fixed step count instead of the clock), so the
losses are those of that machine however long the runs take here. Prints a markdown table and
appends one JSON line a run to --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tinyllm import workflow
from tinyllm.config import load_params, params_from_dict, set_keys
from tinyllm.package import load_package
from tinyllm.scoring import split_metrics
from tinyllm.tokenizer import load_tokens
from tinyllm.train import StepPlan

# What a run spends besides its steps when planning from a rate: building the model and the
# calibration, in seconds (measured on the 2-core CPU).
START_UP_SEC = 1.5


def parse_variant(text: str) -> tuple[str, dict]:
    """NAME:key=value,key=value -> (NAME, {key: value}) with YAML-typed values."""
    import yaml

    name, _, settings = text.partition(":")
    pairs = (item.split("=", 1) for item in settings.split(",") if item)
    return name, {key: yaml.safe_load(value) for key, value in pairs}


def budget_params(base: dict, minutes: float, overrides: dict, tokens_per_sec: float | None):
    """Validated params for one run: the auto recipe for the budget, with the variant on top."""
    raw = json.loads(json.dumps(base))
    raw["train"].update(time_budget_minutes=minutes, recipe="auto")
    params = params_from_dict(raw)
    if overrides:  # a variant: the recipe's values with some changed, taken as given
        params = params_from_dict(set_keys({}, {**params.flat(), **overrides,
                                                "train.recipe": "none"}))
    if tokens_per_sec is None:
        return params
    train, model = params.train, params.model
    step_sec = train.batch_size * train.grad_accum_steps * model.context_length / tokens_per_sec
    eval_sec = train.eval_batches * train.batch_size * model.context_length / (3 * tokens_per_sec)
    plan = StepPlan.for_budget(train, START_UP_SEC, step_sec, eval_sec)
    fixed = dataclasses.replace(train, time_budget_minutes=0.0, max_steps=plan.steps,
                                warmup_steps=plan.warmup_steps, recipe="none")
    return dataclasses.replace(params, train=fixed)


def one_run(params, data: workflow.Layout, root: Path) -> dict:
    layout = workflow.Layout(root)
    for name in ("tokens", "tokenizer"):  # share the prepared data
        target = getattr(layout, name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(getattr(data, name).resolve())
    started = time.monotonic()
    result = workflow.train(params, layout)
    loaded = load_package(layout.model)
    test = split_metrics(loaded.model, load_tokens(layout.tokens / "test.bin", loaded.tokenizer),
                         params.evaluate.batch_size)
    return {"planned_steps": result.plan.steps, "steps": result.steps,
            "stopped_by": result.stopped_by, "train_seconds": round(result.elapsed_sec, 1),
            "wall_seconds": round(time.monotonic() - started, 1),
            "test_loss": round(test["loss"], 4), "test_bits_per_char": round(
                test["bits_per_char"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[1, 2, 5, 10])
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V,...",
                        help="also run the recipe with these keys changed (repeatable)")
    parser.add_argument("--no-auto", action="store_true", help="run only the variants")
    parser.add_argument("--tokens-per-sec", type=float,
                        help="plan steps for a machine training at this rate, not the clock")
    parser.add_argument("--work", type=Path, default=Path("runs/budget_sweep"))
    parser.add_argument("--out", type=Path, default=Path("runs/budget_sweep/results.jsonl"))
    args = parser.parse_args()

    from tinyllm.logs import setup_logging

    setup_logging()
    project = load_params("params.yaml")
    base = {section: dataclasses.asdict(getattr(project, section))
            for section in ("data", "tokenizer", "model", "train", "evaluate")}
    base["tracking"] = {"enabled": False}
    data = workflow.Layout(args.work / "data")
    if not (data.tokens / "test.bin").exists():
        workflow.build(project, data, through=workflow.tokenize)
    variants = ([] if args.no_auto else [("auto", {})]) + [parse_variant(v) for v in args.variant]
    rows = []
    for minutes in args.budgets:
        for name, overrides in variants:
            params = budget_params(base, minutes, overrides, args.tokens_per_sec)
            row = {"budget_minutes": minutes, "recipe": name,
                   "tokens_per_sec_assumed": args.tokens_per_sec,
                   **one_run(params, data, args.work / f"{name}-{minutes:g}min")}
            rows.append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps(row), file=sys.stderr, flush=True)
    print("| budget (min) | recipe | planned steps | steps | test loss | test bits/char |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['budget_minutes']:g} | {r['recipe']} | {r['planned_steps']} | {r['steps']} "
              f"| {r['test_loss']:.4f} | {r['test_bits_per_char']:.4f} |")


if __name__ == "__main__":
    main()

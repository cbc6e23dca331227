"""Recipes fitted to a training budget: what `train.recipe: auto` sets for N minutes of training.

Each row is the best recipe scripts/budget_sweep.py found for that budget on a 2-core CPU
(docs/results.md, "Test loss by training budget", holds the test losses and what was tried). A
budget between rows takes the row of the largest budget it covers (the first row below 1 minute).

Under `recipe: auto` a budgeted run takes these values for the keys below; a key the user set to
something else than both its default and the recipe's value contradicts the recipe and is refused,
naming the key: explicit values are never silently replaced.
"""

from __future__ import annotations

import dataclasses

from tinyllm.errors import TinyLLMError

# The default model (Muon included) with the budget deciding the steps.
_DEFAULT_MODEL = {"model.context_length": 128, "model.n_layer": 4, "model.n_head": 4,
                  "model.d_model": 128, "train.max_steps": 1_000_000, "train.batch_size": 32,
                  "train.optimizer": "muon", "train.learning_rate": 3e-3,
                  "train.warmup_steps": 100, "train.eval_interval": 300, "train.eval_batches": 16}
# A quarter of the context and half the batch: 3.5x the steps in the same time.
_SHORT = {**_DEFAULT_MODEL, "model.context_length": 64, "train.batch_size": 16}
# minutes of training -> params keys; every row sets RECIPE_KEYS.
BY_BUDGET: dict[float, dict[str, int | float | str]] = {
    1: _SHORT,
    2: _SHORT,
    5: _SHORT,
    10: _DEFAULT_MODEL,
}
RECIPE_KEYS = tuple(BY_BUDGET[min(BY_BUDGET)])


def recipe_for(minutes: float) -> tuple[float, dict[str, int | float]]:
    """(the row's budget, its values) for a budget of `minutes`."""
    row = max((b for b in BY_BUDGET if b <= minutes), default=min(BY_BUDGET))
    return row, BY_BUDGET[row]


def apply_recipe(params):
    """Params with the budget's recipe applied when train.recipe is auto and a budget is set."""
    train = params.train
    if train.recipe != "auto" or not train.time_budget_minutes:
        return params
    row, values = recipe_for(train.time_budget_minutes)
    sections = {}
    for key, value in values.items():
        section, name = key.split(".")
        current = getattr(getattr(params, section), name)
        default = _default(getattr(params, section), name)
        if current not in (default, value):
            raise TinyLLMError(
                f"{key} is {current}, but train.recipe auto sets it to {value} for a "
                f"{train.time_budget_minutes:g}-minute budget (the {row:g}-minute recipe); leave "
                f"{key} at its default {default} or set train.recipe: none")
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(params, **{
        section: dataclasses.replace(getattr(params, section), **changes)
        for section, changes in sections.items()})


def _default(section, name: str):
    field = next(f for f in dataclasses.fields(section) if f.name == name)
    return field.default

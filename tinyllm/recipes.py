"""Recipes fitted to a training budget and a device: what `train.recipe: auto` sets for N minutes.

Each CPU row is the best recipe scripts/budget_sweep.py found for that budget on a 2-core CPU
(docs/results.md, "Test loss by training budget", holds the test losses and what was tried).
The CUDA row is the larger configuration measured on one H100 (docs/results.md): no GPU sweep
over budgets has been run yet, so it serves every budget there. Other devices (MPS) take the CPU
rows. A budget between rows takes the row of the largest budget it covers (the first row below
1 minute).

Under `recipe: auto` a budgeted run takes these values for the keys below; a key the user set to
something else than both its default and the recipe's value contradicts the recipe and is refused,
naming the key: explicit values are never silently replaced.
"""

from __future__ import annotations

import dataclasses

from tinyllm.errors import TinyLLMError

# The default model (Muon included) with the budget deciding the steps.
_DEFAULT_MODEL = {"model.context_length": 128, "model.n_layer": 4, "model.n_head": 4,
                  "model.d_model": 128, "train.max_steps": 1_000_000,
                  "train.batch_size": 32, "train.optimizer": "muon", "train.learning_rate": 3e-3,
                  "train.warmup_steps": 100, "train.eval_interval": 300, "train.eval_batches": 16}
# A quarter of the context and half the batch: 3.5x the steps in the same time.
_SHORT = {**_DEFAULT_MODEL, "model.context_length": 64, "train.batch_size": 16}
# For a minute, the default batch: its larger products train 1.19x the tokens/s of batch 16.
_SHORT_WIDE = {**_SHORT, "train.batch_size": 32}
# GPT-2's block: from 5 minutes on, rotary positions, QK-norm and ReLU² no longer pay for their
# dearer steps (docs/results.md, "The block").
_GPT2_BLOCK = {"model.positions": "learned", "model.qk_norm": False, "model.activation": "gelu"}
# A GPU's: six layers of width 384 with dropout, fused AdamW (Muon's many small matmuls leave a
# GPU waiting), context 256, batch 64.
_GPU = {**_DEFAULT_MODEL, "model.context_length": 256, "model.n_layer": 6, "model.n_head": 6,
        "model.d_model": 384, "model.dropout": 0.2, "train.batch_size": 64,
        "train.optimizer": "adamw", "train.learning_rate": 1e-3, "train.warmup_steps": 200,
        "train.eval_interval": 500}
# device kind -> minutes of training -> params keys.
BY_DEVICE: dict[str, dict[float, dict[str, int | float | str]]] = {
    # 10 minutes: the short shape too. On the default corpus it ties the default model (1.461
    # against 1.465); on a small text its smaller steps see the data-limited stall sooner.
    "cpu": {1: _SHORT_WIDE, 2: _SHORT, 5: {**_SHORT, **_GPT2_BLOCK}, 10: {**_SHORT, **_GPT2_BLOCK}},
    "cuda": {1: _GPU},
}
BY_BUDGET = BY_DEVICE["cpu"]
# Passes over the training text a budget's plan makes -> train.weight_decay (the row of the most
# passes it reaches). A plan of many passes is a small text's: it overfits within a dozen passes,
# and stronger decay holds its test loss lower (docs/results.md, "Small texts").
WEIGHT_DECAY_BY_PASSES = {0: 0.1, 20: 1.0}


# The keys that choose a budget's recipe (apply_recipe): the keys it sets follow from these.
RECIPE_INPUTS = ("train.time_budget_minutes", "train.recipe", "train.device")


def recipe_for(minutes: float, device: str = "cpu") -> tuple[float, dict[str, int | float]]:
    """(the row's budget, its values) for a budget of `minutes` on a device kind."""
    rows = BY_DEVICE.get(device, BY_BUDGET)
    row = max((b for b in rows if b <= minutes), default=min(rows))
    return row, rows[row]


def recipe_device(train) -> str:
    """The device kind whose recipes a budgeted run takes: train.device, or where auto lands."""
    if train.device != "auto":
        return train.device
    from tinyllm.devices import select_device  # torch: only for a budgeted auto run

    return select_device("auto", key="train.device").type


def apply_recipe(params):
    """Params with the budget's recipe applied when train.recipe is auto and a budget is set."""
    train = params.train
    if train.recipe != "auto" or not train.time_budget_minutes:
        return params
    device = recipe_device(train)
    row, values = recipe_for(train.time_budget_minutes, device)
    sections = {}
    for key, value in values.items():
        section, name = key.split(".")
        current = getattr(getattr(params, section), name)
        default = _default(getattr(params, section), name)
        if current not in (default, value):
            raise TinyLLMError(
                f"{key} is {current}, but train.recipe auto sets it to {value} for a "
                f"{train.time_budget_minutes:g}-minute budget on {device} (the {row:g}-minute "
                f"{device} recipe); leave "
                f"{key} at its default {default} or set train.recipe: none", key=key)
        sections.setdefault(section, {})[name] = value
    return dataclasses.replace(params, **{
        section: dataclasses.replace(getattr(params, section), **changes)
        for section, changes in sections.items()})


def planned_weight_decay(train, passes: float) -> float:
    """train.weight_decay for a budget's plan of `passes` over the training text: under
    train.recipe auto, WEIGHT_DECAY_BY_PASSES's row, unless the user set a value of their own."""
    if train.recipe != "auto" or train.weight_decay != _default(train, "weight_decay"):
        return train.weight_decay
    return WEIGHT_DECAY_BY_PASSES[max(p for p in WEIGHT_DECAY_BY_PASSES if p <= passes)]


def _default(section, name: str):
    field = next(f for f in dataclasses.fields(section) if f.name == name)
    return field.default

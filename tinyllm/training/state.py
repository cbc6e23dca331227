"""Where a run stands (RunState) and its checkpoint: one dataclass whose fields are what a
checkpoint saves and restores, the best weights kept, and the data-limited stop."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from tinyllm.config import TrainConfig
from tinyllm.errors import first_line
from tinyllm.io import atomic_write, set_aside
from tinyllm.model import GPT, GPTConfig
from tinyllm.training import distributed
from tinyllm.training.plan import StepPlan

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Keys that change how fast or where training runs, not what it computes: a checkpoint made
# under other values of these is still resumed.
RESUMABLE_ACROSS = ("device", "threads", "compile", "checkpoint_interval")
# Validation that has not improved for STALL_EVALS evaluations in a row ends a budgeted run with
# a decay over FINAL_DECAY of the steps so far (at least one evaluation interval). One was too
# few: at a high learning rate validation wobbles, and on the 4.4 MB corpus a single evaluation
# 0.0005 above the best stopped a 10-minute run at a third of its plan (docs/results.md). In the
# final decay, a new best and then STALL_EVALS evaluations no better end the run.
STALL_EVALS, FINAL_DECAY = 2, 0.2


def run_fingerprint(model_cfg: GPTConfig, train_cfg: TrainConfig, data_fingerprint: str) -> str:
    recipe = {k: v for k, v in asdict(train_cfg).items() if k not in RESUMABLE_ACROSS}
    blob = json.dumps({"model": asdict(model_cfg), "train": recipe, "data": data_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _resumable(path: Path, fingerprint: str, mmap: bool = False) -> tuple[dict | None, str]:
    """(the checkpoint at path, "") when it holds an unfinished run of these params and data,
    else (None, why not). mmap reads its tensors only when used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
            return None, "it was made under other params or data"
        if state["step"] >= state["plan"]["steps"]:
            return None, f"its run finished (step {state['step']} of {state['plan']['steps']})"
    except Exception as exc:  # a damaged checkpoint must not stop a fresh start
        return None, f"it cannot be read ({first_line(exc)})"
    return state, ""


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at path if it resumes an interrupted run of these params and data; any
    other (a finished run's, a foreign or a broken one) is set aside.

    Checkpoints resume an interrupted run and nothing else: a run that ends removes its own
    (fit), so training the same params again (`dvc repro -f`) starts from step 0.
    """
    if not path.exists():
        return None
    state, reason = _resumable(path, fingerprint)
    if state is not None:
        return state
    if not distributed.is_main():  # rank 0 sets it aside; every rank starts from step 0
        return None
    aside = set_aside(path)
    log.warning("not resuming from %s: %s; moved it to %s and starting from step 0",
                path, reason, aside.name)
    return None


def checkpoint_run_id(path: Path, fingerprint: str) -> str | None:
    """The tracking run a resumable checkpoint at path logs into, so that its resume continues
    that run; None without one (or for one written before checkpoints kept it). Cheap: no
    tensor is read."""
    state = _resumable(path, fingerprint, mmap=True)[0] if path.exists() else None
    return state.get("run_id") if state else None


@dataclass
class RunState:
    """Where a run stands: everything its checkpoint holds besides the modules' own states.

    Its fields are the one list of what a checkpoint saves and restores (`save`, `restore`).
    """

    step: int = 0
    tokens_seen: int = 0
    best_val: float = math.inf
    best_step: int = 0
    best: dict | None = None  # the best-by-validation weights
    best_optimizer: dict | None = None  # the optimizer's state with them
    evals_since_best: int = 0
    history: list[dict] = field(default_factory=list)
    plan: StepPlan | None = None
    train_seconds: float = 0.0  # sessions before this one, at a restore
    run_id: str | None = None  # the tracking (MLflow) run it logs into: a resume continues it

    def save(self, path: Path, fingerprint: str, model: GPT, optimizer, sampler) -> None:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        save_checkpoint(path, {**fields, "plan": asdict(self.plan), "fingerprint": fingerprint,
                               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                               "sampler_rng": sampler.generator.get_state(),
                               "torch_rng": torch.get_rng_state()})

    @classmethod
    def restore(cls, state: dict, model: GPT, optimizer, sampler, cfg: TrainConfig) -> RunState:
        """The run a checkpoint holds; one written before a field existed takes its default
        (the plan's evaluation cadence: train.eval_interval's)."""
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        run = cls(**{name: state[name] for name in cls.__dataclass_fields__ if name in state})
        run.plan = StepPlan(**{"eval_interval": cfg.eval_interval, **run.plan})
        return run

    def evaluated(self, val_loss: float, model: GPT, optimizer) -> None:
        """Keep the weights (and the optimizer's state) when they are the best so far; count
        evaluations without progress."""
        if val_loss < self.best_val:
            self.best_val, self.best_step, self.evals_since_best = val_loss, self.step, 0
            self.best = copy.deepcopy(model.state_dict())
            self.best_optimizer = copy.deepcopy(optimizer.state_dict())
        else:
            self.evals_since_best += 1

    def stalled(self) -> bool:
        """Validation stopped improving in a budgeted run not already in its final decay."""
        return bool(self.plan.budget_sec) and not self.plan.data_limited_at and (
            self.evals_since_best >= STALL_EVALS)

    def past_decay_bottom(self) -> bool:
        """The final decay found a new best validation and then STALL_EVALS evaluations no
        better: the rest of the decay would only overfit, so the run ends here (the best
        weights stand). A decay that has not yet beaten the pre-stall best runs on: its first
        steps are at a high learning rate."""
        return bool(self.plan.budget_sec) and self.best_step > self.plan.data_limited_at > 0 and (
            self.evals_since_best >= STALL_EVALS)

    def end_at_decay_bottom(self) -> None:
        self.plan = replace(self.plan, steps=self.step)
        log.info("validation has not improved since step %d, in the final decay: the run ends "
                 "here with that step's weights", self.best_step)

    def end_for_data(self) -> None:
        """Decay now, over FINAL_DECAY of the steps so far (or what the plan has left, if
        less), instead of overfitting to the end: `rewind` then goes back to the best weights."""
        end = self.step + max(self.plan.eval_interval, math.ceil(FINAL_DECAY * self.step))
        plan = self.plan.ended_at(self.step, min(end, self.plan.steps))
        self.plan = replace(plan, data_limited_at=self.step)
        log.info("validation has not improved since step %d: back to its weights, and the decay "
                 "ends the run at step %d", self.best_step, self.plan.steps)

    def rewind(self, model: GPT, optimizer) -> None:
        """At the data-limited stop's step (the run's or its replay's), take the best weights
        and their optimizer state back: the decay starts from before the overfitting."""
        if self.step == self.plan.data_limited_at and self.step < self.plan.steps:
            model.load_state_dict(self.best)
            if self.best_optimizer is not None:  # None: a checkpoint from before it was kept
                optimizer.load_state_dict(copy.deepcopy(self.best_optimizer))  # it would alias

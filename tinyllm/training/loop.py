"""The training loop, fit: seeded windows (batches.py), Muon or AdamW (optimizer.py), warm-up and
cosine over a step plan (plan.py), clipping, checkpoints and exact resume (state.py).

A time budget is followed by the clock: the run re-plans its remaining steps whenever the pace it
measures drifts from the plan, and it ends its decay early when validation stops improving (the
data supports no more), so warm-up, decay and the final evaluation land at the deadline or sooner.

Resuming is exact on CPU: a checkpoint holds the weights, optimizer, step, best-so-far weights and
every random state, so training N steps equals training k, resuming, and training N - k. A
checkpoint only resumes an interrupted run: a run that ends removes its checkpoint, and one whose
fingerprint (model shape, training recipe, data) differs from the current run, or whose run had
finished, is set aside, never resumed into.

Under torchrun the W processes train one model data-parallel (DistributedDataParallel). Each
draws every window of a step from the same seeded sampler and keeps rows rank::W of each
micro-batch, so a step sees the same windows under any world size and a checkpoint (written by
rank 0 alone) resumes under any other.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np
import torch

from tinyllm.config import TrainConfig
from tinyllm.devices import autocast_for, seconds, select_device
from tinyllm.errors import TinyLLMError
from tinyllm.model import GPT, GPTConfig, compiled
from tinyllm.training import distributed
from tinyllm.training.batches import (
    WindowSampler,
    check_batch_split,
    check_split_lengths,
    fixed_windows,
    tokens_per_step,
)
from tinyllm.training.optimizer import make_optimizer, optimizer_step, set_weight_decay
from tinyllm.training.plan import Pace, StepPlan, lr_at, warmup_for
from tinyllm.training.state import CHECKPOINT_FILE, RunState, load_checkpoint, run_fingerprint

log = logging.getLogger(__name__)

# A budget's calibration times at least this many steps, and as many as fill this many seconds.
CALIBRATION_STEPS, CALIBRATION_SEC = 3, 1.0


class StoppedBy(str, Enum):
    """Why a run stopped: TrainResult.stopped_by, and `stopped_by` in summary.json and the MLflow
    tag, as the value's string (docs/training-budget.md#when-the-run-stops)."""

    MAX_STEPS = "max_steps"  # no budget: train.max_steps
    PLANNED_STEPS = "planned_steps"  # the end of a budget's plan
    DATA_LIMITED = "data_limited"  # validation stalled: the final decay, maybe to its bottom
    TIME_BUDGET = "time_budget"  # no time left for a step and the final evaluation
    DEADLINE = "deadline"  # past the budget before that evaluation: the best weights stand

    def __str__(self) -> str:
        return self.value


@dataclass
class StepMetrics:
    step: int
    train_loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    tokens_seen: int
    elapsed_sec: float  # since the run began, sessions before a resume included
    planned_steps: int
    val_loss: float | None = None


@dataclass
class TrainResult:
    model: GPT  # holds the best-by-validation weights
    steps: int
    tokens_seen: int
    best_val_loss: float
    best_step: int
    elapsed_sec: float  # the whole run's training seconds, sessions before a resume included
    stopped_by: StoppedBy
    resumed_from: int
    plan: StepPlan
    history: list[dict] = field(default_factory=list)

    @property
    def tokens_per_sec(self) -> float:
        """Over the whole run: evaluations, checkpoints and sessions before a resume included."""
        return self.tokens_seen / max(self.elapsed_sec, 1e-9)


class TrainingInterrupted(TinyLLMError):
    """SIGINT/SIGTERM arrived; a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@contextlib.contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""
    requested: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        if requested:  # a second signal: stop now
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
        requested.append(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@torch.no_grad()
def estimate_loss(model: GPT, batches, batch_size: int, autocast) -> float:
    model.eval()
    inputs, targets = batches
    losses = []
    for i in range(0, len(inputs), batch_size):
        with autocast():
            _, loss = model(inputs[i:i + batch_size], targets[i:i + batch_size])
        losses.append(loss.item() * len(inputs[i:i + batch_size]))
    model.train()
    return sum(losses) / len(inputs)


def fit(model_cfg: GPTConfig, cfg: TrainConfig, train_tokens: np.ndarray,
        val_tokens: np.ndarray, *, checkpoint_dir: Path | None = None,
        data_fingerprint: str = "", callbacks: Iterable[Callable[[StepMetrics], None]] = (),
        plan: StepPlan | None = None, clock: Callable[[], float] = time.monotonic,
        run_id: str | None = None) -> TrainResult:
    """Train a GPT from scratch or from this run's checkpoint; returns the best model.

    run_id names the tracking run this training logs into; checkpoints keep it, so a resume can
    continue that run (state.checkpoint_run_id).

    A budgeted run calibrates its plan and follows `clock` (seconds); a sweep that plans as
    another machine would passes that plan and a clock that advances as that machine's would.

    Each callback gets every step's StepMetrics. One with an on_start(history, model) method
    is first given the run so far (a checkpoint's on resume) and the model being trained; it
    may add keys to the history entry of the step it is called for: checkpoints keep them. One
    with a rehearse(model) method does, on the calibration's throwaway copy and writing nothing,
    what it does at each evaluation, so a budget's plan counts that time too.
    Under torchrun every rank calls this and joins the process group for its duration.
    """
    check_split_lengths(model_cfg.context_length, train=train_tokens, val=val_tokens)
    check_batch_split(cfg.batch_size)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed.process_group(select_device(cfg.device, key="train.device")) as device:
        return _train_on(device, model_cfg, cfg, train_tokens, val_tokens, checkpoint_dir,
                         data_fingerprint, callbacks, plan, clock, run_id)


def calibrate(model: GPT, cfg: TrainConfig, train_tokens: np.ndarray, rows: slice,
              device: torch.device, evaluate: Callable[[GPT], object]) -> tuple[float, float]:
    """Mean seconds of an optimizer step, and seconds of one evaluation (the validation loss and
    what the callbacks do with it) here, timed on a throwaway copy with its own windows and random
    state, so the run itself is the same with or without it. Under train.compile the copy is
    compiled as the run's model will be: the compiling is spent (and counted against the
    budget) here, the run reuses it, and the step timed is the compiled one."""
    probe = copy.deepcopy(model)
    net = compiled(probe) if cfg.compile else probe
    optimizer = make_optimizer(probe, cfg, device)
    sampler = WindowSampler(train_tokens, probe.config.context_length, cfg.batch_size,
                            cfg.seed + 1, rows)
    autocast = autocast_for(device)

    def step() -> float:
        return seconds(lambda: optimizer_step(net, probe, optimizer, sampler, cfg,
                                              cfg.learning_rate, device, autocast), device)

    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        step()  # warms caches up (and compiles)
        timed = [step() for _ in range(CALIBRATION_STEPS)]
        while sum(timed) < CALIBRATION_SEC:  # fast steps (a GPU's) vary: average over more
            timed.append(step())
        eval_sec = seconds(lambda: evaluate(probe), device)
    return statistics.fmean(timed), eval_sec


def _train_on(device: torch.device, model_cfg: GPTConfig, cfg: TrainConfig,
              train_tokens: np.ndarray, val_tokens: np.ndarray, checkpoint_dir: Path | None,
              data_fingerprint: str, callbacks: Iterable[Callable[[StepMetrics], None]],
              plan: StepPlan | None, clock: Callable[[], float], run_id: str | None
              ) -> TrainResult:
    """Build the run (fresh or from its checkpoint), plan it, train it and return the result."""
    autocast = autocast_for(device)
    callbacks = list(callbacks)
    fingerprint = run_fingerprint(model_cfg, cfg, data_fingerprint)
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    world = distributed.world_size()
    rows = slice(distributed.rank(), None, world)  # this rank's share of every batch

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    sampler = WindowSampler(train_tokens, model_cfg.context_length, cfg.batch_size, cfg.seed,
                            rows)
    val_batches = tuple(t.to(device) for t in fixed_windows(
        val_tokens, model_cfg.context_length, cfg.eval_batches * cfg.batch_size, rows))
    started = clock()  # the budget counts from here: calibration, steps, evaluations
    state = _start_or_resume(checkpoint_path, fingerprint, model, optimizer, sampler, cfg)
    state.run_id = run_id
    spent_before = state.train_seconds

    def validate(net: GPT = model) -> float:
        """Each rank scores its share of the fixed batches; all agree on the mean."""
        return distributed.mean_over_ranks(
            estimate_loss(net, val_batches, cfg.batch_size // world, autocast))

    def elapsed() -> float:
        """Seconds this run has trained, sessions before a resume included."""
        return spent_before + clock() - started

    if state.plan is None and plan is not None:
        state.plan = plan
    elif state.plan is None:
        state.plan = _first_plan(model, cfg, train_tokens, rows, device, validate, callbacks,
                               elapsed)
    if state.plan.weight_decay is not None:
        set_weight_decay(optimizer, state.plan.weight_decay)
    loop = _Loop(cfg, model, optimizer, sampler, device, autocast, state, validate, elapsed,
                 clock, callbacks, tokens_per_step(cfg, model_cfg.context_length))

    def checkpoint() -> None:
        if checkpoint_path is not None and distributed.is_main():
            state.train_seconds = elapsed()
            state.save(checkpoint_path, fingerprint, model, optimizer, sampler)

    resumed_from = state.step
    stopped_by = loop.train(checkpoint, checkpoint_path)
    if checkpoint_path is not None and distributed.is_main():
        checkpoint_path.unlink(missing_ok=True)  # the run ended: nothing is left to resume
    if state.best is not None:
        model.load_state_dict(state.best)
    model.eval()
    return TrainResult(model=model, steps=state.step, tokens_seen=state.tokens_seen,
                       best_val_loss=state.best_val, best_step=state.best_step,
                       elapsed_sec=elapsed(), stopped_by=stopped_by, resumed_from=resumed_from,
                       plan=state.plan, history=state.history)


def _start_or_resume(checkpoint_path: Path | None, fingerprint: str, model: GPT, optimizer,
                     sampler: WindowSampler, cfg: TrainConfig) -> RunState:
    """This run's checkpoint restored into the modules, else a fresh RunState; every rank must
    have found the same one."""
    saved = load_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    state = RunState() if saved is None else RunState.restore(saved, model, optimizer, sampler,
                                                              cfg)
    if saved is not None:
        log.info("resuming from %s at step %d of %d", checkpoint_path, state.step, state.plan.steps)
    if not distributed.agree(state.step):
        raise TinyLLMError(f"the training processes found different checkpoints in "
                           f"{checkpoint_path.parent}: every rank must see rank 0's checkpoint "
                           f"directory (use a shared filesystem)")
    if distributed.rank() > 0:  # its own dropout masks; rank 0's RNG state is the checkpoint's
        torch.manual_seed(cfg.seed + 7919 * distributed.rank() + state.step)
    return state


def _first_plan(model: GPT, cfg: TrainConfig, train_tokens: np.ndarray, rows: slice,
                device: torch.device, validate, callbacks: list, elapsed) -> StepPlan:
    """train.max_steps, or the steps a calibration says fit the budget (the same on every rank)."""
    if not cfg.time_budget_minutes:
        return StepPlan.fixed(cfg)
    rehearsals = [c.rehearse for c in callbacks if hasattr(c, "rehearse")]

    def evaluation(net: GPT) -> None:
        validate(net)
        for rehearse in rehearsals:
            rehearse(net)

    step_sec, eval_sec = calibrate(model, cfg, train_tokens, rows, device, evaluation)
    plan = StepPlan.for_budget(cfg, elapsed(), step_sec, eval_sec, epoch_steps=len(
        train_tokens) / tokens_per_step(cfg, model.config.context_length))
    # Every rank takes the shortest plan (and its warm-up), so all stop at the same step.
    steps = -distributed.max_over_ranks(-plan.steps)[0]
    plan = replace(plan, steps=steps, warmup_steps=warmup_for(cfg.warmup_steps, steps),
                   segments=())
    log.info("train.time_budget_minutes %g: planned %d steps, warm-up %d (%.3f s a step, "
             "%.2f s an evaluation)", cfg.time_budget_minutes, plan.steps, plan.warmup_steps,
             step_sec, eval_sec)
    return plan


@dataclass
class _Loop:
    """The steps of one session of a run, from its RunState to the plan's end or a stop."""

    cfg: TrainConfig
    model: GPT
    optimizer: torch.optim.Optimizer
    sampler: WindowSampler
    device: torch.device
    autocast: Callable
    state: RunState
    validate: Callable[[], float]
    elapsed: Callable[[], float]
    clock: Callable[[], float]
    callbacks: list
    tokens_per_step: int

    def train(self, checkpoint: Callable[[], None], checkpoint_path: Path | None) -> StoppedBy:
        """Steps until the plan ends, the deadline comes or a signal arrives; returns why it
        stopped."""
        state, cfg = self.state, self.cfg
        net = distributed.data_parallel(self.model, self.device)  # the model itself, plainly
        step_fn = compiled(net) if cfg.compile else net
        pace = Pace(state.plan.step_sec, state.plan.eval_sec)
        for callback in self.callbacks:  # the run so far (a checkpoint's on resume), the model
            if hasattr(callback, "on_start"):
                callback.on_start(state.history, self.model)
        self.model.train()
        with stop_requests() as stop:
            while state.step < state.plan.steps:
                tick, started = time.perf_counter(), self.clock()
                signum, stop_now, end = self._step(step_fn, stop, pace, tick)
                # A run that ends removes its checkpoint: none is written for its last step.
                saved = signum or (not stop_now and state.step < state.plan.steps
                                   and state.step % cfg.checkpoint_interval == 0)
                if saved:
                    checkpoint()
                if signum:
                    # Once one rank exits, torchrun stops the rest: wait for rank 0's checkpoint.
                    distributed.barrier()
                    where = (f"; checkpoint written to {checkpoint_path}" if checkpoint_path
                             else "")
                    raise TrainingInterrupted(f"training interrupted by signal {signum} at step "
                                              f"{state.step}{where}", signum)
                if stop_now:
                    log.warning("train.time_budget_minutes (%g) reached at step %d of %d "
                                "planned", cfg.time_budget_minutes, state.step, state.plan.steps)
                    return stop_now
                evaluated = state.history[-1].get("val_loss") is not None
                if evaluated or not saved:  # a checkpoint's write is not a step's pace
                    pace.observe(self.clock() - started, evaluated)
                # Every rank moves its plan's end to the earliest any rank asks for.
                state.plan = state.plan.ended_at(state.step, end) if end else state.plan
        if state.plan.data_limited_at:
            return StoppedBy.DATA_LIMITED
        return StoppedBy.PLANNED_STEPS if state.plan.budget_sec else StoppedBy.MAX_STEPS

    def _step(self, step_fn, stop: list[int], pace: Pace, tick: float
              ) -> tuple[int, StoppedBy | None, int]:
        """One optimizer step, its metrics and callbacks, and an evaluation when one is due.

        Returns (a signal that arrived, why the run must stop now or None, the plan end the pace
        asks for or 0), agreed by every rank."""
        state, cfg = self.state, self.cfg
        lr = lr_at(state.step, cfg, state.plan)
        loss, grad_norm = optimizer_step(step_fn, self.model, self.optimizer, self.sampler, cfg,
                                         lr, self.device, self.autocast)
        state.step += 1
        state.tokens_seen += self.tokens_per_step
        elapsed = self.elapsed()
        budget = state.plan.budget_sec or math.inf
        wanted = pace.replanned(state.plan, state.step, elapsed, cfg).steps
        # Out of time: another step and the final evaluation would not fit before the deadline.
        # A signal or the clock may reach the ranks at different steps: all stop together.
        signum, out_of_time, past_deadline, neg_end = distributed.max_over_ranks(
            stop[0] if stop else 0, elapsed + pace.step_sec + pace.eval_sec >= budget,
            elapsed >= budget, -wanted)
        metrics = StepMetrics(
            step=state.step, train_loss=distributed.mean_over_ranks(loss), lr=lr,
            grad_norm=float(grad_norm), tokens_per_sec=self.tokens_per_step / (
                time.perf_counter() - tick), tokens_seen=state.tokens_seen,
            elapsed_sec=elapsed, planned_steps=state.plan.steps)
        plan = state.plan
        due = plan.evaluates_at(state.step)
        # Past the deadline, the best weights so far stand without a final evaluation.
        if (due or out_of_time) and not (past_deadline and state.best is not None):
            metrics.val_loss = self.validate()
            state.evaluated(metrics.val_loss, self.model, self.optimizer)
            if due and not out_of_time and state.stalled():
                state.end_for_data()
            elif state.past_decay_bottom():
                state.end_at_decay_bottom()
            state.rewind(self.model, self.optimizer)
        state.history.append(asdict(metrics))
        for callback in self.callbacks:
            callback(metrics)
        stop_now = (StoppedBy.DEADLINE if past_deadline else StoppedBy.TIME_BUDGET if out_of_time
                    else None)
        end = -neg_end  # the pace's wish, unless validation just moved the plan
        return signum, stop_now, end if state.plan is plan and end != plan.steps else 0

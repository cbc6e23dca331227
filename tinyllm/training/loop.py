"""The training loop: seeded windows, Muon or AdamW, warmup + cosine, clipping, checkpoints, resume.

A time budget is followed by the clock: the run re-plans its remaining steps whenever the pace it
measures drifts from the plan, and it ends its decay early when validation stops improving (the
data supports no more), so warm-up, decay and the final evaluation land at the deadline or sooner.

Resuming is exact on CPU: a checkpoint holds the weights, optimizer, step, best-so-far weights and
every random state, so training N steps equals training k, resuming, and training N - k. A
checkpoint whose fingerprint (model shape, training recipe, data) differs from the current run is
set aside, never resumed into.

Under torchrun the W processes train one model data-parallel (DistributedDataParallel). Each
draws every window of a step from the same seeded sampler and keeps rows rank::W of each
micro-batch, so a step sees the same windows under any world size and a checkpoint (written by
rank 0 alone) resumes under any other.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from tinyllm.config import TrainConfig, warmup_for
from tinyllm.devices import autocast_for, seconds, select_device
from tinyllm.errors import TinyLLMError, first_line
from tinyllm.io import atomic_write, set_aside
from tinyllm.model import GPT, GPTConfig, compiled
from tinyllm.training import distributed
from tinyllm.training.muon import Muon, muon_groups

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Keys that change how fast or where training runs, not what it computes: a checkpoint made
# under other values of these is still resumed.
RESUMABLE_ACROSS = ("device", "threads", "compile", "checkpoint_interval")
# A budget's calibration times at least this many steps, and as many as fill this many seconds.
CALIBRATION_STEPS, CALIBRATION_SEC = 3, 1.0


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
    stopped_by: str  # see _Loop.train
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


@dataclass(frozen=True)
class StepPlan:
    """The steps the schedule spans, kept in the run's checkpoint and summary.

    Without a time budget it is train.max_steps, fixed. With one, a short calibration on throwaway
    copies measures a step and an evaluation, and the steps that fit the budget (at most
    max_steps) become the first plan. While training, the plan's end moves (`ended_at`) when the
    measured pace says the deadline will be missed or wasted, or when validation stalls; each
    move is a segment, over which the decay's progress runs on from where it was to 1 at the new
    end. The segments are the realised schedule: lr_at replays every step's learning rate from
    them, and a resumed run continues them.
    """

    steps: int
    warmup_steps: int
    budget_sec: float = 0.0  # 0: no deadline
    step_sec: float = 0.0  # measured by the calibration (budgeted runs only)
    eval_sec: float = 0.0
    # (first step, decay progress there, last step) of each stretch of the decay; the first
    # starts after the warm-up at progress 0, each later one where its re-plan happened.
    segments: tuple[tuple[int, float, int], ...] = ()
    data_limited_at: int = 0  # the evaluation's step whose stall started the final decay
    eval_interval: int = 0  # steps between evaluations (train.eval_interval, or an epoch's)

    def __post_init__(self) -> None:
        if not self.segments:  # the first plan: one stretch from the warm-up's end
            object.__setattr__(self, "segments", ((self.warmup_steps, 0.0, self.steps),))
        object.__setattr__(self, "segments", tuple(tuple(s) for s in self.segments))

    @classmethod
    def fixed(cls, cfg: TrainConfig) -> StepPlan:
        return cls(steps=cfg.max_steps, warmup_steps=warmup_for(cfg.warmup_steps, cfg.max_steps),
                   eval_interval=cfg.eval_interval)

    @classmethod
    def for_budget(cls, cfg: TrainConfig, spent_sec: float, step_sec: float,
                   eval_sec: float, epoch_steps: float = math.inf) -> StepPlan:
        """The steps that fit what is left of the budget, evaluations and the final one included.

        A budget evaluates at least once an epoch (epoch_steps: steps a pass over the training
        split takes): on a small text, overfitting starts within a few epochs, and the
        data-limited stop can only see it at an evaluation.
        """
        budget = cfg.time_budget_minutes * 60
        every = max(1, int(min(cfg.eval_interval, epoch_steps)))
        steps = min(cfg.max_steps, steps_that_fit(budget - spent_sec, step_sec, eval_sec, every))
        if steps < 1:
            raise TinyLLMError(
                f"train.time_budget_minutes ({cfg.time_budget_minutes:g}) is too short: one "
                f"training step and one evaluation take {step_sec + eval_sec:.1f} s here, "
                f"{spent_sec:.1f} s went on start-up; give at least "
                f"{(spent_sec + 2 * (step_sec + eval_sec)) / 60:.2f} minutes")
        return cls(steps=steps, warmup_steps=warmup_for(cfg.warmup_steps, steps),
                   budget_sec=budget, step_sec=step_sec, eval_sec=eval_sec, eval_interval=every)

    @classmethod
    def replay(cls, summary: dict) -> StepPlan:
        """A finished run's realised schedule (from its summary.json) as a fixed plan: trained
        with train.time_budget_minutes 0 it gives that run's every learning rate and weights."""
        return cls(steps=summary["steps"], warmup_steps=summary["planned_warmup_steps"],
                   segments=summary["plan_segments"],
                   data_limited_at=summary["data_limited_at_step"],
                   eval_interval=summary["eval_interval"])

    def progress(self, step: int) -> float:
        """How far the decay has got at step: 0 after the warm-up, 1 at the plan's end."""
        first, start, last = next(s for s in reversed(self.segments) if s[0] <= step)
        return start + (1 - start) * (step - first) / max(1, last - first)

    def ended_at(self, step: int, end: int) -> StepPlan:
        """This plan with its decay running from where it is at step to its end at `end`."""
        if step <= self.warmup_steps or step >= self.steps:  # warming up, or done
            return self
        end = max(end, step + 1)
        if end == self.steps:
            return self
        kept = tuple(s for s in self.segments if s[0] < step)  # one segment a step at most
        segment = (step, min(1.0, self.progress(step)), end)
        return replace(self, steps=end, segments=(*kept, segment))


def steps_that_fit(seconds_left: float, step_sec: float, eval_sec: float,
                   eval_interval: int) -> int:
    """Steps that fit seconds_left at this pace, their evaluations and a final one included."""
    return int((seconds_left - eval_sec) / (step_sec + eval_sec / eval_interval))


def lr_at(step: int, cfg: TrainConfig, plan: StepPlan | None = None) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_fraction of it at the plan's end."""
    plan = plan or StepPlan.fixed(cfg)
    if step < plan.warmup_steps:
        return cfg.learning_rate * (step + 1) / plan.warmup_steps
    floor = cfg.learning_rate * cfg.min_lr_fraction
    return floor + 0.5 * (cfg.learning_rate - floor) * (
        1 + math.cos(math.pi * min(1.0, plan.progress(step))))


@dataclass
class Pace:
    """What a step and an evaluation cost now, from the run's own clock (budgeted runs).

    The step time is a moving average over the last few dozen steps, so a machine that slows
    down (or speeds up) after the calibration is noticed within seconds.
    """

    step_sec: float
    eval_sec: float
    SMOOTHING, SPIKE = 0.05, 3.0  # weight of each new step's time; the most it counts for

    def observe(self, seconds: float, evaluated: bool) -> None:
        """One loop iteration's wall time; an evaluation's share is what exceeds a step. A step
        counts at most SPIKE times the average: a hiccup moves the pace a little, a machine
        that stays slower moves it all the way within a few dozen steps."""
        if evaluated:
            self.eval_sec = max(seconds - self.step_sec, 0.0)
        else:
            seconds = min(seconds, self.SPIKE * self.step_sec) if self.step_sec else seconds
            self.step_sec += self.SMOOTHING * (seconds - self.step_sec)

    def replanned(self, plan: StepPlan, step: int, elapsed: float, cfg: TrainConfig) -> StepPlan:
        """plan, or plan ended where the steps that fit what is left of the budget end.

        A drift under REPLAN_TOLERANCE of what is left (or a few steps' time) is let be, so a
        steady run keeps one plan. After a data-limited stop the end only moves earlier.
        """
        if not plan.budget_sec or step <= plan.warmup_steps:
            return plan
        left = plan.budget_sec - elapsed
        per_step = self.step_sec + self.eval_sec / plan.eval_interval
        planned = (plan.steps - step) * per_step + self.eval_sec
        if abs(planned - left) <= max(REPLAN_TOLERANCE * left, 3 * per_step):
            return plan
        end = step + steps_that_fit(left, self.step_sec, self.eval_sec, plan.eval_interval)
        return plan.ended_at(step, min(end, plan.steps if plan.data_limited_at else cfg.max_steps))


# Re-plan when the plan's projected end misses the deadline by more than this share of what is
# left; validation that has not improved for STALL_EVALS evaluations ends the run with a decay
# over FINAL_DECAY of the steps so far (at least one evaluation interval).
REPLAN_TOLERANCE = 0.05
STALL_EVALS, FINAL_DECAY = 1, 0.2


class WindowSampler:
    """Random (input, target) windows from a token array, reproducible from its seed.

    Every process draws the whole batch's starts, so the generator's state is the same for any
    world size, and keeps only its `rows` of them (all of them in a plain run).
    """

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int,
                 rows: slice = slice(None)):
        self.tokens, self.context, self.batch_size, self.rows = tokens, context, batch_size, rows
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.tokens) - self.context, (self.batch_size,),
                               generator=self.generator).numpy()
        return _windows(self.tokens, starts[self.rows], self.context)


def fixed_windows(tokens: np.ndarray, context: int, count: int, rows: slice = slice(None)):
    """Evenly spaced windows over a split: the same validation batches at every evaluation."""
    starts = np.linspace(0, len(tokens) - context - 1, count).astype(np.int64)
    return _windows(tokens, starts[rows], context)


def _windows(tokens: np.ndarray, starts: np.ndarray, context: int):
    """(inputs, targets): the context tokens from each start, and the same shifted by one."""
    windows = torch.from_numpy(np.stack([tokens[s:s + context + 1] for s in starts])
                               .astype(np.int64))
    return windows[:, :-1], windows[:, 1:]


def check_split_lengths(context: int, **splits: np.ndarray) -> None:
    for name, tokens in splits.items():
        if len(tokens) < context + 2:
            raise TinyLLMError(f"the {name} split has {len(tokens)} tokens, fewer than "
                               f"model.context_length + 2 ({context + 2}); lower "
                               f"model.context_length or use a larger corpus")


def check_batch_split(batch_size: int) -> None:
    """Every process takes an equal share of each micro-batch, so the world size must divide it."""
    world = distributed.world_size()
    if batch_size % world:
        raise TinyLLMError(f"train.batch_size ({batch_size}) must be divisible by the number of "
                           f"training processes ({world})")


def run_fingerprint(model_cfg: GPTConfig, train_cfg: TrainConfig, data_fingerprint: str) -> str:
    recipe = {k: v for k, v in asdict(train_cfg).items() if k not in RESUMABLE_ACROSS}
    blob = json.dumps({"model": asdict(model_cfg), "train": recipe, "data": data_fingerprint},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at path if it belongs to this run; a foreign or broken one is set aside."""
    if not path.exists():
        return None
    reason = None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
            reason = "it was made under other params or data"
    except Exception as exc:  # a damaged checkpoint must not stop a fresh start
        reason = f"it cannot be read ({first_line(exc)})"
    if reason is None:
        return state
    if not distributed.is_main():  # rank 0 sets it aside; every rank starts from step 0
        return None
    aside = set_aside(path)
    log.warning("not resuming from %s: %s; moved it to %s and starting from step 0",
                path, reason, aside.name)
    return None


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
          plan: StepPlan | None = None, clock: Callable[[], float] = time.monotonic
          ) -> TrainResult:
    """Train a GPT from scratch or from this run's checkpoint; returns the best model.

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
                         data_fingerprint, callbacks, plan, clock)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer: Muon (muon.py), or AdamW fused on CUDA and CPU: one pass over the
    parameters instead of a dozen (on CPU, 0.8 ms a step instead of 5 for the default model)."""
    if cfg.optimizer == "muon":
        return Muon(muon_groups(model, cfg.weight_decay), lr=cfg.learning_rate,
                    betas=(cfg.beta1, cfg.beta2))
    return torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                             betas=(cfg.beta1, cfg.beta2),
                             fused=device.type in ("cuda", "cpu") or None)


def optimizer_step(net: torch.nn.Module, model: GPT, optimizer: torch.optim.Optimizer,
                   sampler: WindowSampler, cfg: TrainConfig, lr: float, device: torch.device,
                   autocast) -> tuple[float, torch.Tensor]:
    """One step: accumulate cfg.grad_accum_steps micro-batches, clip, the optimizer's step.

    Returns this rank's mean micro-batch loss and the gradient norm before clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    losses = []
    for micro in range(cfg.grad_accum_steps):
        inputs, targets = (t.to(device) for t in sampler.next())
        with distributed.sync_gradients(net, micro == cfg.grad_accum_steps - 1):
            with autocast():
                _, loss = net(inputs, targets)
            (loss / cfg.grad_accum_steps).backward()
        losses.append(loss.detach())
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(torch.stack(losses).mean()), grad_norm


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


def _train_on(device: torch.device, model_cfg: GPTConfig, cfg: TrainConfig,
              train_tokens: np.ndarray, val_tokens: np.ndarray, checkpoint_dir: Path | None,
              data_fingerprint: str, callbacks: Iterable[Callable[[StepMetrics], None]],
              plan: StepPlan | None, clock: Callable[[], float]) -> TrainResult:
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

    state = load_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    run = RunState() if state is None else RunState.restore(state, model, optimizer, sampler,
                                                             cfg)
    if state is not None:
        log.info("resuming from %s at step %d of %d", checkpoint_path, run.step, run.plan.steps)
    if not distributed.agree(run.step):
        raise TinyLLMError(f"the training processes found different checkpoints in "
                           f"{checkpoint_dir}: every rank must see rank 0's checkpoint directory "
                           f"(use a shared filesystem)")
    if distributed.rank() > 0:  # its own dropout masks; rank 0's RNG state is the checkpoint's
        torch.manual_seed(cfg.seed + 7919 * distributed.rank() + run.step)
    spent_before = run.train_seconds

    def validate(net: GPT = model) -> float:
        """Each rank scores its share of the fixed batches; all agree on the mean."""
        return distributed.mean_over_ranks(
            estimate_loss(net, val_batches, cfg.batch_size // world, autocast))

    def elapsed() -> float:
        """Seconds this run has trained, sessions before a resume included."""
        return spent_before + clock() - started

    if run.plan is None and plan is not None:
        run.plan = plan
    elif run.plan is None:
        run.plan = _first_plan(model, cfg, train_tokens, rows, device, validate, callbacks,
                               elapsed)
    loop = _Loop(cfg, model, optimizer, sampler, device, autocast, run, validate, elapsed,
                 clock, callbacks, tokens_per_step=cfg.batch_size * cfg.grad_accum_steps
                 * model_cfg.context_length)

    def checkpoint() -> None:
        if checkpoint_path is not None and distributed.is_main():
            run.train_seconds = elapsed()
            run.save(checkpoint_path, fingerprint, model, optimizer, sampler)

    resumed_from = run.step
    stopped_by = loop.train(checkpoint, checkpoint_path)
    if run.best is not None:
        model.load_state_dict(run.best)
    model.eval()
    return TrainResult(model=model, steps=run.step, tokens_seen=run.tokens_seen,
                       best_val_loss=run.best_val, best_step=run.best_step,
                       elapsed_sec=elapsed(), stopped_by=stopped_by, resumed_from=resumed_from,
                       plan=run.plan, history=run.history)


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
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * model.config.context_length
    plan = StepPlan.for_budget(cfg, elapsed(), step_sec, eval_sec,
                               epoch_steps=len(train_tokens) / tokens_per_step)
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
    run: RunState
    validate: Callable[[], float]
    elapsed: Callable[[], float]
    clock: Callable[[], float]
    callbacks: list
    tokens_per_step: int

    def train(self, checkpoint: Callable[[], None], checkpoint_path: Path | None) -> str:
        """Steps until the plan ends, the deadline comes or a signal arrives; returns why it
        stopped: max_steps, planned_steps, data_limited (validation stalled, the decay was brought
        forward), time_budget (the clock stopped it, with a final evaluation) or deadline (past
        the budget before that evaluation: the best weights so far stand, unevaluated again)."""
        run, cfg = self.run, self.cfg
        net = distributed.data_parallel(self.model, self.device)  # the model itself, plainly
        step_fn = compiled(net) if cfg.compile else net
        pace = Pace(run.plan.step_sec, run.plan.eval_sec)
        for callback in self.callbacks:  # the run so far (a checkpoint's on resume), the model
            if hasattr(callback, "on_start"):
                callback.on_start(run.history, self.model)
        self.model.train()
        with stop_requests() as stop:
            while run.step < run.plan.steps:
                tick, started = time.perf_counter(), self.clock()
                signum, stop_now, end = self._step(step_fn, stop, pace, tick)
                saved = signum or stop_now or run.step % cfg.checkpoint_interval == 0 or (
                    run.step == run.plan.steps)
                if saved:
                    checkpoint()
                if signum:
                    # Once one rank exits, torchrun stops the rest: wait for rank 0's checkpoint.
                    distributed.barrier()
                    where = (f"; checkpoint written to {checkpoint_path}" if checkpoint_path
                             else "")
                    raise TrainingInterrupted(f"training interrupted by signal {signum} at step "
                                              f"{run.step}{where}", signum)
                if stop_now:
                    log.warning("train.time_budget_minutes (%g) reached at step %d of %d "
                                "planned", cfg.time_budget_minutes, run.step, run.plan.steps)
                    return stop_now
                evaluated = run.history[-1].get("val_loss") is not None
                if evaluated or not saved:  # a checkpoint's write is not a step's pace
                    pace.observe(self.clock() - started, evaluated)
                # Every rank moves its plan's end to the earliest any rank asks for.
                run.plan = run.plan.ended_at(run.step, end) if end else run.plan
        if run.plan.data_limited_at:
            return "data_limited"
        return "planned_steps" if run.plan.budget_sec else "max_steps"

    def _step(self, step_fn, stop: list[int], pace: Pace, tick: float
              ) -> tuple[int, str, int]:
        """One optimizer step, its metrics and callbacks, and an evaluation when one is due.

        Returns (a signal that arrived, why the run must stop now or "", the plan end the pace
        asks for or 0), agreed by every rank."""
        run, cfg = self.run, self.cfg
        lr = lr_at(run.step, cfg, run.plan)
        loss, grad_norm = optimizer_step(step_fn, self.model, self.optimizer, self.sampler, cfg,
                                         lr, self.device, self.autocast)
        run.step += 1
        run.tokens_seen += self.tokens_per_step
        elapsed = self.elapsed()
        budget = run.plan.budget_sec or math.inf
        wanted = pace.replanned(run.plan, run.step, elapsed, cfg).steps
        # Out of time: another step and the final evaluation would not fit before the deadline.
        # A signal or the clock may reach the ranks at different steps: all stop together.
        signum, out_of_time, past_deadline, neg_end = distributed.max_over_ranks(
            stop[0] if stop else 0, elapsed + pace.step_sec + pace.eval_sec >= budget,
            elapsed >= budget, -wanted)
        metrics = StepMetrics(
            step=run.step, train_loss=distributed.mean_over_ranks(loss), lr=lr,
            grad_norm=float(grad_norm), tokens_per_sec=self.tokens_per_step / (
                time.perf_counter() - tick), tokens_seen=run.tokens_seen,
            elapsed_sec=elapsed, planned_steps=run.plan.steps)
        plan = run.plan
        due = run.step % plan.eval_interval == 0 or run.step == plan.steps
        # Past the deadline, the best weights so far stand without a final evaluation.
        if (due or out_of_time) and not (past_deadline and run.best is not None):
            metrics.val_loss = self.validate()
            run.evaluated(metrics.val_loss, self.model, self.optimizer)
            if due and not out_of_time and run.stalled():
                run.end_for_data()
            run.rewind(self.model, self.optimizer)
        run.history.append(asdict(metrics))
        for callback in self.callbacks:
            callback(metrics)
        stop_now = "deadline" if past_deadline else "time_budget" if out_of_time else ""
        end = -neg_end  # the pace's wish, unless validation just moved the plan
        return signum, stop_now, end if run.plan is plan and end != plan.steps else 0

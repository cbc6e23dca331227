"""The training loop: seeded windows, Muon or AdamW, warmup + cosine, clipping, checkpoints, resume.

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

from tinyllm import distributed
from tinyllm.config import TrainConfig, warmup_for
from tinyllm.devices import autocast_for, seconds, select_device
from tinyllm.errors import TinyLLMError, first_line
from tinyllm.io import atomic_write, set_aside
from tinyllm.model import GPT, GPTConfig, compiled
from tinyllm.muon import Muon, muon_groups

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
    stopped_by: str  # "max_steps", "planned_steps" (what fit the budget), "time_budget" (deadline)
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
    """The steps the schedule spans, fixed once per run and kept in its checkpoint.

    Without a time budget it is train.max_steps. With one, a short calibration on throwaway
    copies measures a step and an evaluation, and the steps that fit the budget (at most
    max_steps) become the plan: warm-up and cosine decay are laid over them, so the learning rate
    reaches its floor at the deadline. A resumed run keeps its plan, so it ends with the
    uninterrupted run's weights; a run slower than its calibration stops at the deadline.
    """

    steps: int
    warmup_steps: int
    budget_sec: float = 0.0  # 0: no deadline
    step_sec: float = 0.0  # measured by the calibration (budgeted runs only)
    eval_sec: float = 0.0

    @property
    def deadline_sec(self) -> float:
        """When training stops at the latest, leaving time for the evaluation it ends with."""
        return self.budget_sec - self.eval_sec if self.budget_sec else math.inf

    @classmethod
    def fixed(cls, cfg: TrainConfig) -> StepPlan:
        return cls(steps=cfg.max_steps, warmup_steps=warmup_for(cfg.warmup_steps, cfg.max_steps))

    @classmethod
    def for_budget(cls, cfg: TrainConfig, spent_sec: float, step_sec: float,
                   eval_sec: float) -> StepPlan:
        """The steps that fit what is left of the budget, evaluations and the final one included."""
        budget = cfg.time_budget_minutes * 60
        left = budget - spent_sec - eval_sec
        steps = min(cfg.max_steps, int(left / (step_sec + eval_sec / cfg.eval_interval)))
        if steps < 1:
            raise TinyLLMError(
                f"train.time_budget_minutes ({cfg.time_budget_minutes:g}) is too short: one "
                f"training step and one evaluation take {step_sec + eval_sec:.1f} s here, "
                f"{spent_sec:.1f} s went on start-up; give at least "
                f"{(spent_sec + 2 * (step_sec + eval_sec)) / 60:.2f} minutes")
        return cls(steps=steps, warmup_steps=warmup_for(cfg.warmup_steps, steps),
                   budget_sec=budget, step_sec=step_sec, eval_sec=eval_sec)


def lr_at(step: int, cfg: TrainConfig, plan: StepPlan | None = None) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_fraction of it at the plan's end."""
    plan = plan or StepPlan.fixed(cfg)
    if step < plan.warmup_steps:
        return cfg.learning_rate * (step + 1) / plan.warmup_steps
    progress = (step - plan.warmup_steps) / max(1, plan.steps - plan.warmup_steps)
    floor = cfg.learning_rate * cfg.min_lr_fraction
    return floor + 0.5 * (cfg.learning_rate - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


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
          data_fingerprint: str = "", callbacks: Iterable[Callable[[StepMetrics], None]] = ()
          ) -> TrainResult:
    """Train a GPT from scratch or from this run's checkpoint; returns the best model.

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
                         data_fingerprint, callbacks)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer: Muon (tinyllm.muon), or AdamW fused on CUDA and CPU: one pass over the
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


def _train_on(device: torch.device, model_cfg: GPTConfig, cfg: TrainConfig,
              train_tokens: np.ndarray, val_tokens: np.ndarray, checkpoint_dir: Path | None,
              data_fingerprint: str, callbacks: Iterable[Callable[[StepMetrics], None]]
              ) -> TrainResult:
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
    step, tokens_seen, best_val, best_step, best_state = 0, 0, math.inf, 0, None
    history: list[dict] = []
    plan, spent_before = None, 0.0
    started = time.monotonic()  # the budget counts from here: calibration, steps, evaluations

    state = load_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        best_val, best_step, best_state = state["best_val"], state["best_step"], state["best"]
        history, plan = state["history"], StepPlan(**state["plan"])
        spent_before = state["train_seconds"]
        log.info("resuming from %s at step %d of %d", checkpoint_path, step, plan.steps)
    if not distributed.agree(step):
        raise TinyLLMError(f"the training processes found different checkpoints in "
                           f"{checkpoint_dir}: every rank must see rank 0's checkpoint directory "
                           f"(use a shared filesystem)")
    if distributed.rank() > 0:  # its own dropout masks; rank 0's RNG state is the checkpoint's
        torch.manual_seed(cfg.seed + 7919 * distributed.rank() + step)
    resumed_from = step

    def validate(net: GPT = model) -> float:
        """Each rank scores its share of the fixed batches; all agree on the mean."""
        return distributed.mean_over_ranks(
            estimate_loss(net, val_batches, cfg.batch_size // world, autocast))

    def elapsed() -> float:
        """Seconds this run has trained, sessions before a resume included."""
        return spent_before + time.monotonic() - started

    if plan is None and not cfg.time_budget_minutes:
        plan = StepPlan.fixed(cfg)
    elif plan is None:
        rehearsals = [c.rehearse for c in callbacks if hasattr(c, "rehearse")]

        def evaluation(net: GPT) -> None:
            validate(net)
            for rehearse in rehearsals:
                rehearse(net)

        step_sec, eval_sec = calibrate(model, cfg, train_tokens, rows, device, evaluation)
        plan = StepPlan.for_budget(cfg, elapsed(), step_sec, eval_sec)
        # Every rank takes the shortest plan (and its warm-up), so all stop at the same step.
        steps = -distributed.max_over_ranks(-plan.steps)[0]
        plan = replace(plan, steps=steps, warmup_steps=warmup_for(cfg.warmup_steps, steps))
        log.info("train.time_budget_minutes %g: planned %d steps, warm-up %d (%.3f s a step, "
                 "%.2f s an evaluation)", cfg.time_budget_minutes, plan.steps, plan.warmup_steps,
                 step_sec, eval_sec)

    def checkpoint():
        if checkpoint_path is None or not distributed.is_main():
            return
        save_checkpoint(checkpoint_path, {
            "fingerprint": fingerprint, "step": step, "tokens_seen": tokens_seen,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler_rng": sampler.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "best_val": best_val, "best_step": best_step, "best": best_state,
            "history": history, "plan": asdict(plan), "train_seconds": elapsed()})

    net = distributed.data_parallel(model, device)  # the model itself in a plain run
    step_fn = compiled(net) if cfg.compile else net
    for callback in callbacks:  # the run so far (a checkpoint's on resume) and the live model
        if hasattr(callback, "on_start"):
            callback.on_start(history, model)
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * model_cfg.context_length
    stopped_by = "planned_steps" if plan.budget_sec else "max_steps"
    model.train()
    with stop_requests() as stop:
        while step < plan.steps:
            tick = time.perf_counter()
            lr = lr_at(step, cfg, plan)
            loss, grad_norm = optimizer_step(step_fn, model, optimizer, sampler, cfg, lr,
                                             device, autocast)
            step += 1
            tokens_seen += tokens_per_step
            # A signal or the clock may reach the ranks at different steps: all stop together.
            signum, out_of_time = distributed.max_over_ranks(stop[0] if stop else 0,
                                                             elapsed() >= plan.deadline_sec)
            metrics = StepMetrics(
                step=step, train_loss=distributed.mean_over_ranks(loss), lr=lr,
                grad_norm=float(grad_norm), tokens_per_sec=tokens_per_step / (
                    time.perf_counter() - tick), tokens_seen=tokens_seen,
                elapsed_sec=elapsed(), planned_steps=plan.steps)
            if step % cfg.eval_interval == 0 or step == plan.steps or out_of_time:
                metrics.val_loss = validate()
                if metrics.val_loss < best_val:
                    best_val, best_step = metrics.val_loss, step
                    best_state = copy.deepcopy(model.state_dict())
            history.append(asdict(metrics))
            for callback in callbacks:
                callback(metrics)
            if signum or out_of_time or step % cfg.checkpoint_interval == 0 or (
                    step == plan.steps):
                checkpoint()
            if signum:
                # Once one rank exits, torchrun stops the rest: wait for rank 0's checkpoint.
                distributed.barrier()
                where = f"; checkpoint written to {checkpoint_path}" if checkpoint_path else ""
                raise TrainingInterrupted(f"training interrupted by signal {signum} at step "
                                          f"{step}{where}", signum)
            if out_of_time:
                stopped_by = "time_budget"
                log.warning("train.time_budget_minutes (%g) reached at step %d of %d planned",
                            cfg.time_budget_minutes, step, plan.steps)
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model=model, steps=step, tokens_seen=tokens_seen, best_val_loss=best_val,
                       best_step=best_step, elapsed_sec=elapsed(), stopped_by=stopped_by,
                       resumed_from=resumed_from, plan=plan, history=history)

"""The training loop: seeded random windows, AdamW, warmup + cosine, clipping, checkpoints, resume.

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
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tinyllm import distributed
from tinyllm.config import TrainConfig
from tinyllm.devices import autocast_for, select_device
from tinyllm.errors import TinyLLMError, first_line
from tinyllm.io import atomic_write
from tinyllm.model import GPT, GPTConfig, compiled

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
# Keys that change how fast or where training runs, not what it computes: a checkpoint made
# under other values of these is still resumed.
RESUMABLE_ACROSS = ("time_budget_minutes", "device", "threads", "compile", "checkpoint_interval")


@dataclass
class StepMetrics:
    step: int
    train_loss: float
    lr: float
    grad_norm: float
    tokens_per_sec: float
    tokens_seen: int
    elapsed_sec: float
    val_loss: float | None = None


@dataclass
class TrainResult:
    model: GPT  # holds the best-by-validation weights
    steps: int
    tokens_seen: int
    best_val_loss: float
    best_step: int
    elapsed_sec: float
    stopped_by: str  # "max_steps" | "time_budget"
    resumed_from: int
    tokens_per_sec: float  # over the steps trained in this call
    history: list[dict] = field(default_factory=list)


class TrainingInterrupted(TinyLLMError):
    """SIGINT/SIGTERM arrived; a checkpoint was written first."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to the peak, then cosine decay to min_lr_fraction of it at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
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
        reason = f"it cannot be read ({first_line(exc)[:120]})"
    if reason is None:
        return state
    if not distributed.is_main():  # rank 0 sets it aside; every rank starts from step 0
        return None
    aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}{path.suffix}")
    path.rename(aside)
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


def train(model_cfg: GPTConfig, cfg: TrainConfig, train_tokens: np.ndarray,
          val_tokens: np.ndarray, *, checkpoint_dir: Path | None = None,
          data_fingerprint: str = "", callbacks: Iterable[Callable[[StepMetrics], None]] = ()
          ) -> TrainResult:
    """Train a GPT from scratch or from this run's checkpoint; returns the best model.

    Each callback gets every step's StepMetrics. One with an on_start(history, model) method
    is first given the run so far (a checkpoint's on resume) and the model being trained; it
    may add keys to the history entry of the step it is called for: checkpoints keep them.
    Under torchrun every rank calls this and joins the process group for its duration.
    """
    check_split_lengths(model_cfg.context_length, train=train_tokens, val=val_tokens)
    check_batch_split(cfg.batch_size)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    with distributed.process_group(select_device(cfg.device, key="train.device")) as device:
        return _train_on(device, model_cfg, cfg, train_tokens, val_tokens, checkpoint_dir,
                         data_fingerprint, callbacks)


def _train_on(device: torch.device, model_cfg: GPTConfig, cfg: TrainConfig,
              train_tokens: np.ndarray, val_tokens: np.ndarray, checkpoint_dir: Path | None,
              data_fingerprint: str, callbacks: Iterable[Callable[[StepMetrics], None]]
              ) -> TrainResult:
    autocast = autocast_for(device)
    fingerprint = run_fingerprint(model_cfg, cfg, data_fingerprint)
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    world = distributed.world_size()
    rows = slice(distributed.rank(), None, world)  # this rank's share of every batch

    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.learning_rate,
                                  betas=(cfg.beta1, cfg.beta2),
                                  fused=device.type == "cuda" or None)
    sampler = WindowSampler(train_tokens, model_cfg.context_length, cfg.batch_size, cfg.seed,
                            rows)
    val_batches = tuple(t.to(device) for t in fixed_windows(
        val_tokens, model_cfg.context_length, cfg.eval_batches * cfg.batch_size, rows))
    step, tokens_seen, best_val, best_step, best_state = 0, 0, math.inf, 0, None
    history: list[dict] = []

    state = load_checkpoint(checkpoint_path, fingerprint) if checkpoint_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        sampler.generator.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
        step, tokens_seen = state["step"], state["tokens_seen"]
        best_val, best_step, best_state = state["best_val"], state["best_step"], state["best"]
        history = state["history"]
        log.info("resuming from %s at step %d of %d", checkpoint_path, step, cfg.max_steps)
    if not distributed.agree(step):
        raise TinyLLMError(f"the training processes found different checkpoints in "
                           f"{checkpoint_dir}: every rank must see rank 0's checkpoint directory "
                           f"(use a shared filesystem)")
    if distributed.rank() > 0:  # its own dropout masks; rank 0's RNG state is the checkpoint's
        torch.manual_seed(cfg.seed + 7919 * distributed.rank() + step)
    resumed_from, tokens_at_start = step, tokens_seen

    def checkpoint():
        if checkpoint_path is None or not distributed.is_main():
            return
        save_checkpoint(checkpoint_path, {
            "fingerprint": fingerprint, "step": step, "tokens_seen": tokens_seen,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "sampler_rng": sampler.generator.get_state(), "torch_rng": torch.get_rng_state(),
            "best_val": best_val, "best_step": best_step, "best": best_state,
            "history": history})

    def validate() -> float:
        """Each rank scores its share of the fixed batches; all agree on the mean."""
        return distributed.mean_over_ranks(
            estimate_loss(model, val_batches, cfg.batch_size // world, autocast))

    net = distributed.data_parallel(model, device)  # the model itself in a plain run
    step_fn = compiled(net) if cfg.compile else net
    callbacks = list(callbacks)
    for callback in callbacks:  # the run so far (a checkpoint's on resume) and the live model
        if hasattr(callback, "on_start"):
            callback.on_start(history, model)
    tokens_per_step = cfg.batch_size * cfg.grad_accum_steps * model_cfg.context_length
    started = time.monotonic()
    budget = cfg.time_budget_minutes * 60
    stopped_by = "max_steps"
    model.train()
    with stop_requests() as stop:
        while step < cfg.max_steps:
            tick = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(cfg.grad_accum_steps):
                inputs, targets = (t.to(device) for t in sampler.next())
                with distributed.sync_gradients(net, micro == cfg.grad_accum_steps - 1):
                    with autocast():
                        _, loss = step_fn(inputs, targets)
                    (loss / cfg.grad_accum_steps).backward()
                loss_sum += loss.item()
            loss_sum = distributed.mean_over_ranks(loss_sum)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            metrics = StepMetrics(
                step=step, train_loss=loss_sum / cfg.grad_accum_steps, lr=lr,
                grad_norm=float(grad_norm), tokens_per_sec=tokens_per_step / (
                    time.perf_counter() - tick), tokens_seen=tokens_seen,
                elapsed_sec=time.monotonic() - started)
            if step % cfg.eval_interval == 0 or step == cfg.max_steps:
                metrics.val_loss = validate()
                if metrics.val_loss < best_val:
                    best_val, best_step = metrics.val_loss, step
                    best_state = copy.deepcopy(model.state_dict())
            history.append(asdict(metrics))
            for callback in callbacks:
                callback(metrics)
            out_of_time = bool(budget) and time.monotonic() - started >= budget
            # A signal or the clock may reach the ranks at different steps: all stop together.
            signum, out_of_time = distributed.max_over_ranks(stop[0] if stop else 0, out_of_time)
            if signum or out_of_time or step % cfg.checkpoint_interval == 0 or (
                    step == cfg.max_steps):
                checkpoint()
            if signum:
                # Once one rank exits, torchrun stops the rest: wait for rank 0's checkpoint.
                distributed.barrier()
                where = f"; checkpoint written to {checkpoint_path}" if checkpoint_path else ""
                raise TrainingInterrupted(f"training interrupted by signal {signum} at step "
                                          f"{step}{where}", signum)
            if out_of_time:
                stopped_by = "time_budget"
                log.warning("train.time_budget_minutes (%s) reached at step %d of %d",
                            cfg.time_budget_minutes, step, cfg.max_steps)
                break
    if best_state is None:  # stopped before the first evaluation
        best_val = validate()
        best_step, best_state = step, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    model.eval()
    elapsed = time.monotonic() - started
    return TrainResult(model=model, steps=step, tokens_seen=tokens_seen, best_val_loss=best_val,
                       best_step=best_step, elapsed_sec=elapsed, stopped_by=stopped_by,
                       resumed_from=resumed_from,
                       tokens_per_sec=(tokens_seen - tokens_at_start) / max(elapsed, 1e-9),
                       history=history)

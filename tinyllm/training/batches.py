"""Training and validation windows: seeded random batches (this rank's rows of each), fixed
validation batches, and the checks that the splits and batch can make them."""

from __future__ import annotations

import numpy as np
import torch

from tinyllm.config import TrainConfig
from tinyllm.errors import TinyLLMError
from tinyllm.training import distributed


def tokens_per_step(cfg: TrainConfig, context_length: int) -> int:
    """Tokens one optimizer step trains on: its windows (every micro-batch's) times their length."""
    return cfg.batch_size * cfg.grad_accum_steps * context_length


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

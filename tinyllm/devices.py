"""Where torch runs and in which dtype: one answer for training, evaluation, the CLI and bench."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch

from tinyllm.errors import TinyLLMError


def select_device(name: str, key: str) -> torch.device:
    """The torch device a DEVICES name means here; key names the setting in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TinyLLMError(f"{key} is 'cuda' but no CUDA device is available")
    if name == "mps" and not torch.backends.mps.is_available():
        raise TinyLLMError(f"{key} is 'mps' but MPS is not available")
    return torch.device(name)


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype training's matmuls run in: bf16 under autocast on CUDA, fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def autocast_for(device: torch.device) -> Callable:
    if device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=compute_dtype(device))
    return contextlib.nullcontext


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of fn, waiting for the work it queued on an accelerator to finish."""
    start = time.perf_counter()
    fn()
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()  # torch.cuda or torch.mps
    return time.perf_counter() - start

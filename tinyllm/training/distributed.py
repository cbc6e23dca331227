"""The process group of a data-parallel run under torchrun; a plain run never creates one.

torchrun starts one process per device and tells each its place through the environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT). Without WORLD_SIZE > 1 there is no group and every
helper here returns at once, so single-process training runs exactly as it always did.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tinyllm.errors import TinyLLMError


def world_size() -> int:
    """How many processes train together; read from the environment, so known before the group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's place among them (0 without torchrun, whatever RANK says)."""
    return int(os.environ.get("RANK", "0")) if world_size() > 1 else 0


def is_main() -> bool:
    """Rank 0 alone writes checkpoints, outputs and tracking, so nothing is written twice."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: torch.device):
    """Join torchrun's group for the block; yields this rank's device (cuda:LOCAL_RANK on GPUs)."""
    if world_size() == 1:
        yield device
        return
    if device.type not in ("cpu", "cuda"):
        raise TinyLLMError(f"train.device {device.type} cannot train in several processes; "
                           f"use cpu or cuda")
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        # Every rank checks before joining, so none waits for a rank that cannot start.
        local_processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), device.index + 1)
        if local_processes > torch.cuda.device_count():
            raise TinyLLMError(f"torchrun started more processes on this machine than it has "
                               f"CUDA devices ({torch.cuda.device_count()}); set "
                               f"--nproc_per_node to at most that")
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model wrapped so that backward averages gradients over the ranks (as is, alone)."""
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def sync_gradients(net: torch.nn.Module, now: bool):
    """Average gradients once per optimizer step (its last micro-batch), not on every one."""
    if now or not isinstance(net, DistributedDataParallel):
        return contextlib.nullcontext()
    return net.no_sync()


def _on_every_rank(values: list, dtype: torch.dtype, op) -> torch.Tensor:
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"  # nccl reduces GPU tensors only
    tensor = torch.tensor(values, dtype=dtype, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor


def max_over_ranks(*values: int) -> list[int]:
    """Each value's largest over all ranks: one decision (stop or not) that every rank takes."""
    if not dist.is_initialized():
        return list(values)
    return _on_every_rank(list(values), torch.int64, dist.ReduceOp.MAX).tolist()


def agree(value: int) -> bool:
    """Whether every rank holds the same value (e.g. the step it resumes from)."""
    highest, negated_lowest = max_over_ranks(value, -value)
    return highest == -negated_lowest


def mean_over_ranks(value: float) -> float:
    """The mean over all ranks of a per-rank mean over equal shares: the whole batch's mean."""
    if not dist.is_initialized():
        return value
    return _on_every_rank([value], torch.float64, dist.ReduceOp.SUM).item() / dist.get_world_size()


def barrier() -> None:
    """Wait for every rank (e.g. for rank 0's checkpoint before anyone exits)."""
    if dist.is_initialized():
        dist.barrier()

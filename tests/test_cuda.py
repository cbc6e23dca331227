"""The CUDA path: bf16 autocast, fused AdamW, the KV cache and torch.compile on a GPU.

Skipped on machines without CUDA; run them wherever a GPU is available.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys

import pytest
import torch
from tiny_project import make_project, train_stage, write_corpus
from torch import nn

from tinyllm.training.loop import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture
def cuda_config(train_config):
    """AdamW (what a GPU trains with best), and enough steps and batch for the loss to fall
    clearly (to ~0.55x its start on CPU)."""
    return dataclasses.replace(train_config, device="cuda", optimizer="adamw", max_steps=40,
                               batch_size=32, learning_rate=1e-2, warmup_steps=5,
                               eval_interval=10)


@pytest.fixture
def adamw_defaults(monkeypatch) -> list[dict]:
    """The defaults (fused included) of every AdamW that training creates."""
    created = []

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self.defaults)

    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    return created


@contextlib.contextmanager
def linear_output_dtypes():
    """Collects the dtype of every nn.Linear output inside the block."""
    dtypes: set[torch.dtype] = set()

    def hook(module, _inputs, output):
        if isinstance(module, nn.Linear):
            dtypes.add(output.dtype)

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        yield dtypes
    finally:
        handle.remove()


def test_cuda_training_uses_bf16_autocast_and_fused_adamw(gpt_config, cuda_config, tokens,
                                                         adamw_defaults):
    with linear_output_dtypes() as dtypes:
        result = fit(gpt_config, cuda_config, tokens, tokens)
    assert dtypes == {torch.bfloat16}
    assert [d["fused"] for d in adamw_defaults] == [True]  # torch's default (None) is not fused
    losses = [h["train_loss"] for h in result.history]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert next(result.model.parameters()).is_cuda


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_kv_cache_matches_full_forward_on_cuda(model, gpt_config, dtype, atol):
    model = model.to("cuda", dtype)
    idx = torch.randint(1, gpt_config.vocab_size, (2, gpt_config.context_length), device="cuda")
    with torch.no_grad():
        full, _ = model(idx)
        cache = model.new_cache(2)
        pieces = [model(idx[:, :5], cache=cache)[0]]
        pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(5, idx.size(1))]
    torch.testing.assert_close(torch.cat(pieces, dim=1).float(), full.float(), atol=atol, rtol=0)


def test_compiled_training_runs_on_cuda(gpt_config, cuda_config, tokens):
    result = fit(gpt_config, dataclasses.replace(cuda_config, compile=True, max_steps=5),
                   tokens, tokens)
    assert result.steps == 5
    assert all(math.isfinite(h["train_loss"]) for h in result.history)


def test_more_torchrun_processes_than_gpus_is_one_error_line(tmp_path):
    layout = make_project(tmp_path / "project", write_corpus(tmp_path / "corpus"),
                          **{"train.device": "cuda"})
    count = torch.cuda.device_count()
    code, output = train_stage(layout, [sys.executable, "-m", "torch.distributed.run",
                                        "--standalone", f"--nproc_per_node={count + 1}"])
    assert code != 0
    assert (f"error: torchrun started more processes on this machine than it has CUDA devices "
            f"({count}); set --nproc_per_node to at most that\n") in output
    assert not layout.checkpoints.exists()

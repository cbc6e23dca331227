"""Whole-split metrics: every character of a split is scored exactly once.

Windows overlap by half a context, and each window scores only the characters in its second half
(the first window scores all of its own), so every scored character sees at least half a context
of history, the way the model sees text when it generates.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from tinyllm.model import GPT


def scoring_windows(n_tokens: int, context: int) -> list[tuple[int, int]]:
    """(start, first scored position) pairs covering targets 1 .. n_tokens - 1 exactly once."""
    stride = max(1, context // 2)
    windows, first = [], 1
    while first < n_tokens:
        start = max(0, min(first + stride - 1 - context, n_tokens - 1 - context))
        windows.append((start, first - start - 1))
        first = start + context + 1
    return windows


@torch.no_grad()
def _scored_windows(model: GPT, tokens: np.ndarray,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch of windows: the model's logits, the windows' tokens (inputs and targets) and
    the mask of the targets each scores."""
    model.eval()
    context = model.config.context_length
    device = model.tok_emb.weight.device
    windows = scoring_windows(len(tokens), context)
    for i in range(0, len(windows), batch_size):
        chunk = windows[i:i + batch_size]
        data = torch.from_numpy(np.stack(
            [tokens[s:s + context + 1] for s, _ in chunk]).astype(np.int64)).to(device)
        first = torch.tensor([f for _, f in chunk], device=device)
        logits, _ = model(data[:, :-1])
        positions = torch.arange(data.size(1) - 1, device=device)  # a text shorter than the
        yield logits, data, positions[None, :] >= first[:, None]  # context is one window


def _scored_batches(model: GPT, tokens: np.ndarray, batch_size: int) -> Iterator[torch.Tensor]:
    """Per batch of windows, the NLL (nats, float64) of the targets it scores, in text order."""
    for logits, data, scored in _scored_windows(model, tokens, batch_size):
        nll = F.cross_entropy(logits.float().transpose(1, 2), data[:, 1:], reduction="none")
        yield nll[scored].double()


def char_logprobs(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """The model's log-probabilities of every character [len(tokens) - 1, vocab] at each of
    positions 1 .. len(tokens) - 1, scored as char_nll scores them (its NLL is minus the
    target's entry): what the server's text scoring (echo with logprobs) lists."""
    rows = [torch.log_softmax(logits.float(), dim=-1)[scored].cpu()
            for logits, _, scored in _scored_windows(model, tokens, batch_size)]
    return torch.cat(rows) if rows else torch.zeros(0, model.config.vocab_size)


def split_nll(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) and the number of characters it covers."""
    total, count = 0.0, 0
    for nll in _scored_batches(model, tokens, batch_size):
        total += float(nll.sum())
        count += len(nll)
    return total, count


def char_nll(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The NLL (nats) of each of targets 1 .. len(tokens) - 1, in text order: what
    `tinyllm compare` pairs up character by character."""
    parts = [nll.cpu().numpy() for nll in _scored_batches(model, tokens, batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


def split_metrics(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    nll, count = split_nll(model, tokens, batch_size)
    loss = nll / count
    return {"loss": loss, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss),
            "characters": count}

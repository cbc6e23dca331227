"""Split metrics: every character of a split scored exactly once, or, for a split longer than
evaluate.max_chars, evenly spaced windows of it with the 95% confidence interval of the loss.

Windows overlap by half a context, and each window scores only the characters in its second half
(the first window scores all of its own), so every scored character sees at least half a context
of history, the way the model sees text when it generates. A sample draws from the same windows,
so it estimates the same loss as scoring the whole split.

Memory follows the batch, not the split: windows are generated as they are scored, token files
are memory-mapped and sliced a batch of windows at a time, and only sums (or, for a sample, one
mean per window) are kept.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F

from tinyllm.model import GPT

CONFIDENCE = 0.95  # of the interval reported for a sample's loss (loss_ci95: its half-width)
Z = NormalDist().inv_cdf(0.5 + CONFIDENCE / 2)


def scoring_windows(n_tokens: int, context: int) -> Iterator[tuple[int, int]]:
    """(start, first scored position) pairs covering targets 1 .. n_tokens - 1 exactly once, in
    text order: window k > 0 starts at k x stride (but the last) and scores its last stride."""
    stride = max(1, context // 2)
    first = 1
    while first < n_tokens:
        start = max(0, min(first + stride - 1 - context, n_tokens - 1 - context))
        yield start, first - start - 1
        first = start + context + 1


def sample_windows(n_tokens: int, context: int,
                   max_chars: int) -> tuple[list[tuple[int, int]], int] | None:
    """For a split of more than max_chars scored characters: (evenly spaced windows scoring
    max_chars characters in all, rounded to whole windows and at least two; the number of windows
    they were drawn from). None where the split is scored whole (max_chars 0: no cap).

    Only the regular windows are drawn (not the first or the last, which score more or fewer
    characters), so each scores half a context and weighs the same in the mean.
    """
    if not max_chars or n_tokens - 1 <= max_chars:
        return None
    stride = max(1, context // 2)
    regular = math.ceil((n_tokens - 1 - context) / stride) - 1  # windows 1 .. all but the last
    count = max(2, max_chars // stride)
    if count >= regular:  # the sample would be nearly the split: score it whole
        return None
    return [(stride * (1 + (2 * i + 1) * regular // (2 * count)), context - stride)
            for i in range(count)], regular


@torch.no_grad()
def _scored_windows(model: GPT, tokens: np.ndarray, windows: Iterable[tuple[int, int]],
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per batch of windows: the model's logits, the windows' tokens (inputs and targets) and
    the mask of the targets each scores."""
    model.eval()
    context = model.config.context_length
    device = model.tok_emb.weight.device
    windows = iter(windows)
    while chunk := list(itertools.islice(windows, batch_size)):
        data = torch.from_numpy(np.stack(
            [tokens[s:s + context + 1] for s, _ in chunk]).astype(np.int64)).to(device)
        first = torch.tensor([f for _, f in chunk], device=device)
        logits, _ = model(data[:, :-1])
        positions = torch.arange(data.size(1) - 1, device=device)  # a text shorter than the
        yield logits, data, positions[None, :] >= first[:, None]  # context is one window


def _window_nll(model: GPT, tokens: np.ndarray, windows: Iterable[tuple[int, int]],
                batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of windows, the NLL (nats, float64) of every target and the mask of those
    the windows score."""
    for logits, data, scored in _scored_windows(model, tokens, windows, batch_size):
        nll = F.cross_entropy(logits.float().transpose(1, 2), data[:, 1:], reduction="none")
        yield nll.double(), scored


def char_logprobs(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """The model's log-probabilities of every character [len(tokens) - 1, vocab] at each of
    positions 1 .. len(tokens) - 1, scored as char_nll scores them (its NLL is minus the
    target's entry): what the server's text scoring (echo with logprobs) lists."""
    windows = scoring_windows(len(tokens), model.config.context_length)
    rows = [torch.log_softmax(logits.float(), dim=-1)[scored].cpu()
            for logits, _, scored in _scored_windows(model, tokens, windows, batch_size)]
    return torch.cat(rows) if rows else torch.zeros(0, model.config.vocab_size)


def char_nll(model: GPT, tokens: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The NLL (nats) of each of targets 1 .. len(tokens) - 1, in text order: what
    `tinyllm compare` pairs up character by character."""
    windows = scoring_windows(len(tokens), model.config.context_length)
    parts = [nll[scored].cpu().numpy()
             for nll, scored in _window_nll(model, tokens, windows, batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


Progress = Callable[[int, int], None]  # told (characters scored so far, characters to score)


def split_metrics(model: GPT, tokens: np.ndarray, batch_size: int = 32, max_chars: int = 0,
                  progress: Progress | None = None) -> dict[str, float]:
    """Loss (nats/char), bits/char, perplexity and the characters scored: of every character,
    or of a sample where the split has more than max_chars (0: no cap), which adds loss_ci95."""
    context = model.config.context_length
    sample = sample_windows(len(tokens), context, max_chars)
    windows = scoring_windows(len(tokens), context) if sample is None else sample[0]
    to_score = max(0, len(tokens) - 1) if sample is None else len(windows) * max(1, context // 2)
    total, count, window_means = 0.0, 0, []
    for nll, scored in _window_nll(model, tokens, windows, batch_size):
        if sample is None:
            total += float(nll[scored].sum())
        else:
            window_means.append((nll * scored).sum(dim=1).cpu() / scored.sum(dim=1).cpu())
        count += int(scored.sum())
        if progress:
            progress(count, to_score)
    if sample is None:
        return _metrics(total / count, count)
    means = torch.cat(window_means).numpy()
    # The windows' means as a sample without replacement of the split's regular windows.
    spread = means.std(ddof=1) / math.sqrt(len(means)) * math.sqrt(1 - len(means) / sample[1])
    return {**_metrics(float(means.mean()), count), "loss_ci95": Z * float(spread)}


def _metrics(loss: float, count: int) -> dict[str, float]:
    return {"loss": loss, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss),
            "characters": count}


def describe_loss(metrics: dict[str, float]) -> str:
    """`1.5609 nats/char`, or `1.5609 ± 0.0042 nats/char (95% CI of a sample)` for a sample."""
    ci = metrics.get("loss_ci95")
    if ci is None:
        return f"{metrics['loss']:.4f} nats/char"
    return f"{metrics['loss']:.4f} ± {ci:.4f} nats/char ({CONFIDENCE:.0%} CI of a sample)"

"""Sampling text from a GPT: greedy, temperature, top-k/p, min-p, frequency and presence penalties,
log-probabilities, seeds, stop strings, streaming.

Long conversations slide: when the window would outgrow the context, generation continues from
the last half-context of tokens. The KV-cache path and the full-recompute path slide at the same
moments, so they condition on the same tokens and greedy decoding gives the same text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch

from tinyllm.config import SamplingConfig
from tinyllm.model import GPT, compiled
from tinyllm.tokenizer import UNKNOWN_ID, CharTokenizer

# What a text starts after: the corpus's documents follow a newline, an empty prompt starts from
# one, and the server names it as its tokenizer's bos_token (serving/tokenizing.py).
TEXT_START = "\n"


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                  min_p: float = 0.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k, outside the top-p probability mass, and below
    min_p times the most likely token's probability."""
    logits = logits.clone()
    if min_p > 0.0:
        probs = torch.softmax(logits, dim=-1)
        below = probs < min_p * probs.max(dim=-1, keepdim=True).values
        logits[below] = float("-inf")  # never the most likely token itself
    if 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1, None]
        logits[logits < kth] = float("-inf")
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        beyond = torch.cumsum(probs, dim=-1) - probs >= top_p
        beyond[..., 0] = False  # the most likely token stays, however small top_p (5e-324 is 0
        sorted_logits[beyond] = float("-inf")  # in float32: a mass of 0 would be >= it)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sampling_logits(logits: torch.Tensor, settings: SamplingConfig,
                    counts: torch.Tensor | None = None) -> torch.Tensor:
    """The logits (shape [vocab]) of the distribution the next token is drawn from: the model's,
    never the unknown-character placeholder, less the penalties over counts (how often each
    token was generated so far), over the temperature, filtered. At temperature 0 (greedy
    picks their argmax) they are the penalised logits at temperature 1, unfiltered."""
    logits = logits.float().cpu()
    logits[UNKNOWN_ID] = float("-inf")  # never emit the unknown-character placeholder
    if counts is not None and (settings.frequency_penalty or settings.presence_penalty):
        # OpenAI's definition: mu[j] - c[j] * frequency_penalty - (c[j] > 0) * presence_penalty
        logits = logits - (settings.frequency_penalty * counts
                           + settings.presence_penalty * (counts > 0))
    if torch.isnan(logits).any():  # a broken model; never sample (or argmax) from NaN
        raise FloatingPointError("the model's logits hold NaN")
    if settings.temperature == 0:
        return logits
    return filter_logits(tempered(logits, settings.temperature), settings.top_k,
                         settings.top_p, settings.min_p)


def tempered(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits / temperature for any temperature > 0, however small: shifted so that the largest
    is 0 and divided in float64, so no logit becomes +inf (a softmax of inf is NaN) and a
    temperature below float32's smallest number is not 0. The shift changes no probability."""
    shifted = logits.double() - logits.max()
    return (shifted / temperature).float()


def pick(logits: torch.Tensor, settings: SamplingConfig, generator: torch.Generator) -> int:
    """One token id from sampling_logits: their argmax at temperature 0, else a draw."""
    if settings.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class Draw(NamedTuple):
    """A sampled token with log-probabilities of the distribution it was drawn from
    (sampling_logits): its own, and the `top` most likely tokens' as (id, logprob), best first
    (never a token that distribution could not give)."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


class Sampler:
    """One generation's draws: its settings, its random generator and, when a penalty is on,
    how often each token was generated so far. top_logprobs: with a number (0-20), each draw
    is a Draw carrying that many of the most likely tokens; else a plain token id."""

    def __init__(self, settings: SamplingConfig, vocab_size: int,
                 top_logprobs: int | None = None):
        self.settings, self.top_logprobs = settings, top_logprobs
        self.generator = torch.Generator().manual_seed(settings.seed)
        penalised = settings.frequency_penalty or settings.presence_penalty
        self.counts = torch.zeros(vocab_size) if penalised else None

    def draw(self, logits: torch.Tensor) -> int | Draw:
        """The next token from the last position's logits (shape [vocab])."""
        scores = sampling_logits(logits, self.settings, self.counts)
        token = pick(scores, self.settings, self.generator)
        if self.counts is not None:
            self.counts[token] += 1
        if self.top_logprobs is None:
            return token
        logprobs = torch.log_softmax(scores, dim=-1)
        possible = int(torch.isfinite(logprobs).sum())
        best = torch.topk(logprobs, min(self.top_logprobs, possible))
        return Draw(token, float(logprobs[token]),
                    list(zip(best.indices.tolist(), best.values.tolist(), strict=True)))


@torch.inference_mode()
def stream_tokens(model: GPT, prompt_ids: Sequence[int], settings: SamplingConfig,
                  use_cache: bool = True) -> Iterator[int]:
    """Yield new token ids one at a time, sliding the window past the context length."""
    model.eval()
    context = model.config.context_length
    keep = max(1, context // 2)
    device = model.tok_emb.weight.device
    window = [int(i) for i in prompt_ids][-context:] or [UNKNOWN_ID]
    sampler = Sampler(settings, model.config.vocab_size)
    cache = None
    for _ in range(settings.max_tokens):
        if not use_cache:
            logits, _ = model(torch.tensor([window], device=device))
        elif cache is None:
            cache = model.new_cache(1)
            logits, _ = model(torch.tensor([window], device=device), cache=cache)
        else:
            logits, _ = model(torch.tensor([[window[-1]]], device=device), cache=cache)
        token = sampler.draw(logits[0, -1])
        yield token
        window.append(token)
        if len(window) > context:
            window, cache = window[-keep:], None


def compiled_for_generation(model: GPT) -> GPT:
    """torch.compile for stream_tokens: dynamic shapes, since prompts and the KV cache grow. The
    text stays the same; the first tokens wait for the compiler."""
    return compiled(model, dynamic=True)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of text could still be the start of a stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def prompt_ids(tokenizer: CharTokenizer, prompt: str) -> list[int]:
    """The ids generation starts from; an empty prompt starts from TEXT_START."""
    return [int(i) for i in tokenizer.encode(prompt or TEXT_START)]


class StopFilter:
    """Turns generated characters into the pieces to show, ending before any stop string.

    Characters that could still start a stop string are held back until they cannot.
    """

    def __init__(self, stop: Sequence[str] = ()):
        self.stops = [s for s in stop if s]
        self.generated = ""
        self.emitted = 0
        self.stopped = False

    def push(self, text: str) -> str:
        """The piece that is safe to show after text was generated ('' if none); sets stopped
        when a stop string appeared."""
        self.generated += text
        start = self.emitted
        hits = [self.generated.find(s, max(0, start - len(s))) for s in self.stops]
        hits = [h for h in hits if h >= 0]
        if hits:
            self.stopped = True
            self.emitted = max(start, min(hits))
            self.generated = self.generated[:self.emitted]
            return self.generated[start:]
        self.emitted = max(start, len(self.generated) - _held_back(self.generated, self.stops))
        return self.generated[start:self.emitted]

    def flush(self) -> str:
        """What is left once generation ended without a stop string."""
        start, self.emitted = self.emitted, len(self.generated)
        return self.generated[start:]

    @property
    def text(self) -> str:
        return self.generated[:self.emitted]


def stream_text(model: GPT, tokenizer: CharTokenizer, prompt: str, settings: SamplingConfig,
                stop: Sequence[str] = (), use_cache: bool = True) -> Iterator[str]:
    """Yield the continuation of prompt piece by piece, ending before any stop string."""
    pieces = StopFilter(stop)
    for token in stream_tokens(model, prompt_ids(tokenizer, prompt), settings, use_cache):
        piece = pieces.push(tokenizer.decode([token]))
        if piece:
            yield piece
        if pieces.stopped:
            return
    rest = pieces.flush()
    if rest:
        yield rest


def generate_text(model: GPT, tokenizer: CharTokenizer, prompt: str, settings: SamplingConfig,
                  stop: Sequence[str] = (), use_cache: bool = True) -> str:
    return "".join(stream_text(model, tokenizer, prompt, settings, stop, use_cache))

"""Is model B really better than model A? Paired per-character scores and a block bootstrap.

Both models score the same text character by character (scoring.py's windows: every character
once, with at least half a context of history). The difference B - A in bits/char gets
a 95% confidence interval from a block bootstrap: the per-character differences are cut into
consecutive blocks, and whole blocks are resampled, so the correlation between neighbouring
characters (a hard passage is hard for several characters in a row) widens the interval as it
should instead of being ignored.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tinyllm.errors import TinyLLMError
from tinyllm.evaluation.scoring import char_nll
from tinyllm.package import LoadedModel

LEVEL = 0.95
RESAMPLES = 2000
BLOCK_CONTEXTS = 4  # default block length: this many of the longer context length
MIN_BLOCKS = 10  # fewer blocks than this give no usable interval


@dataclass
class Comparison:
    a_bits_per_char: float
    b_bits_per_char: float
    difference: float  # B - A, bits/char: negative means B predicts the text better
    low: float
    high: float
    level: float
    characters: int  # scored by both
    left_out: int  # characters of the text outside one of the vocabularies
    left_out_distinct: str
    block_length: int
    blocks: int
    resamples: int
    seed: int

    @property
    def real(self) -> bool:
        """The interval excludes 0: a difference at this confidence level."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict:
        return {**asdict(self), "real": self.real}


def shared_text(text: str, a: LoadedModel, b: LoadedModel) -> tuple[str, str, int]:
    """The text without the characters either vocabulary lacks, which ones and how many."""
    known = set(a.tokenizer.chars) & set(b.tokenizer.chars)
    kept = "".join(c for c in text if c in known)
    return kept, "".join(sorted(set(text) - known)), len(text) - len(kept)


def block_bootstrap(diffs: np.ndarray, block: int, resamples: int, seed: int,
                    level: float = LEVEL) -> tuple[float, float, int]:
    """(low, high, blocks): a percentile interval for the mean of diffs, resampling whole
    consecutive blocks of `block` values (the last, shorter block included)."""
    starts = np.arange(0, len(diffs), block)
    sums = np.add.reduceat(diffs, starts)
    sizes = np.diff(np.append(starts, len(diffs)))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(starts), size=(resamples, len(starts)))
    means = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high), len(starts)


def compare(a: LoadedModel, b: LoadedModel, text: str, source: str, *, seed: int = 0,
            block_length: int | None = None, resamples: int = RESAMPLES,
            batch_size: int = 32) -> Comparison:
    """Score text with both models and bootstrap the difference B - A in bits/char."""
    if not text:
        raise TinyLLMError(f"{source} is empty: nothing to score")
    kept, distinct, left_out = shared_text(text, a, b)
    context = max(a.config.context_length, b.config.context_length)
    if len(kept) <= context:
        raise TinyLLMError(f"{source} has {len(kept)} characters both models know, not more "
                           f"than the context length {context}: give a longer --text")
    block = block_length or BLOCK_CONTEXTS * context
    scored = len(kept) - 1
    if scored < MIN_BLOCKS * block:
        raise TinyLLMError(f"{source} gives {scored} scored characters, fewer than {MIN_BLOCKS} "
                           f"blocks of {block}: give a longer --text or a shorter --block")
    scores = [char_nll(m.model, m.tokenizer.encode(kept), batch_size) / math.log(2)
              for m in (a, b)]
    diffs = scores[1] - scores[0]
    low, high, blocks = block_bootstrap(diffs, block, resamples, seed)
    return Comparison(
        a_bits_per_char=float(scores[0].mean()), b_bits_per_char=float(scores[1].mean()),
        difference=float(diffs.mean()), low=low, high=high, level=LEVEL, characters=scored,
        left_out=left_out, left_out_distinct=distinct, block_length=block, blocks=blocks,
        resamples=resamples, seed=seed)


def describe(c: Comparison, a_name: str, b_name: str, source: str) -> str:
    """The comparison for a person: both scores, the interval, and what it means."""
    pct = f"{c.level:.0%}"
    lines = [f"A  {c.a_bits_per_char:.4f} bits/char  {a_name}",
             f"B  {c.b_bits_per_char:.4f} bits/char  {b_name}",
             f"on {c.characters:,} characters of {source}"]
    if c.left_out:
        lines.append(f"left out {c.left_out:,} characters outside one model's vocabulary: "
                     f"{c.left_out_distinct!r}")
    lines.append(f"B - A  {c.difference:+.4f} bits/char, {pct} CI [{c.low:+.4f}, {c.high:+.4f}] "
                 f"(block bootstrap: {c.resamples} resamples of {c.blocks} blocks of "
                 f"{c.block_length} characters, seed {c.seed})")
    if c.real:
        better = "B" if c.difference < 0 else "A"
        lines.append(f"The difference is real at the {pct} level: {better} predicts this text "
                     f"better by {abs(c.difference):.4f} bits/char.")
    else:
        lines.append(f"The difference is not real at the {pct} level: the interval contains 0, "
                     "so it is within the noise of this text.")
    return "\n".join(lines)

"""The caps a server puts on every request, so that no request holds a worker for minutes:
`tinyllm serve`'s options (docs/serving.md#limits-and-errors) and the MLflow Model's fixed ones
(tracking/pyfunc.py); and the seed a request that gives none draws.

Not params.yaml knobs: no DVC stage depends on this file, so changing a cap re-runs nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

SERVED_MAX_TOKENS = 2000  # at most config.MAX_TOKENS_CEILING, the most any generation asks for
SERVED_REQUEST_SECONDS = 30.0


@dataclass(frozen=True)
class Limits:
    """Server-side caps (the `tinyllm serve` options)."""

    max_tokens: int = SERVED_MAX_TOKENS  # per choice
    request_seconds: float = SERVED_REQUEST_SECONDS  # then it ends with finish_reason "length"
    max_prompt_chars: int = 100_000
    max_body_bytes: int = 16 << 20
    max_n: int = 16
    max_attention_chars: int = 256  # /v1/attention's text (and the model's context length)
    header_seconds: float = 10.0  # for a request's headers to arrive (serving/intake.py)
    body_seconds: float = 30.0  # for its body to arrive


FRESH_SEEDS = 2**32  # an unseeded request draws its seed below this (exact in any JSON reader)


def fresh_seed() -> int:
    """The seed of a served request that gave none: a new one each time, as OpenAI does."""
    return secrets.randbelow(FRESH_SEEDS)

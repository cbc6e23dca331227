"""CharTokenizer: one id per character, fitted on training text, stored as JSON (never pickle).

Id 0 is reserved for characters the training text never showed. The tokenizer's `unknown` policy
says what encode does with them: "replace" maps them to id 0 (decoded as U+FFFD), "drop" removes
them. Evaluation, generation and chat all encode through `encode_report`, so the policy is applied
the same way everywhere and callers can tell the user which characters were affected.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyllm.errors import TinyLLMError
from tinyllm.io import atomic_write_bytes, atomic_write_text, read_json

log = logging.getLogger(__name__)

FORMAT = "tinyllm.char-tokenizer"
FORMAT_VERSION = 1
UNKNOWN_ID = 0
UNKNOWN_TEXT = "\ufffd"
POLICIES = ("replace", "drop")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
ENCODE_CHUNK = 1 << 20  # characters encoded at a time


@dataclass
class Encoded:
    ids: np.ndarray
    unknown: Counter  # character -> how many times it was replaced or dropped


class CharTokenizer:
    def __init__(self, chars: list[str], unknown: str = "replace"):
        if unknown not in POLICIES:
            raise TinyLLMError(f"tokenizer unknown-character policy must be one of {POLICIES}, "
                               f"got {unknown!r}")
        if not chars or len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise TinyLLMError("tokenizer vocabulary must be a non-empty list of distinct single "
                               "characters")
        self.chars = sorted(chars)
        self.unknown = unknown
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.int64)
        # Code point -> id; every other code point (the last entry: those past the table) is
        # UNKNOWN_ID.
        self._ids = np.full(codepoints.max() + 2, UNKNOWN_ID, dtype=self.token_dtype)
        self._ids[codepoints] = np.arange(1, len(codepoints) + 1)
        self._decode_table = np.array([UNKNOWN_TEXT, *self.chars], dtype=object)

    @classmethod
    def fit(cls, text: str, unknown: str = "replace") -> CharTokenizer:
        if not text:
            raise TinyLLMError("cannot fit a tokenizer on empty text")
        return cls(sorted(set(text)), unknown)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def token_dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id: token files use it on disk."""
        return np.dtype(np.uint16 if self.vocab_size <= 2**16 else np.uint32)

    def encode_report(self, text: str) -> Encoded:
        """Encode with the unknown policy applied, reporting the characters it touched.

        A chunk of ENCODE_CHUNK characters at a time, into one array of token ids: a 50 MB text
        takes its ids' memory (2 bytes a character) and a chunk's, not a few times 8 bytes a
        character."""
        ids = np.empty(len(text), dtype=self.token_dtype)
        unknown: Counter = Counter()
        kept = 0
        for i in range(0, len(text), ENCODE_CHUNK):
            codes = _codepoints(text[i:i + ENCODE_CHUNK])
            chunk = self._ids[np.minimum(codes, len(self._ids) - 1)]
            known = chunk != UNKNOWN_ID
            if not known.all():
                missing, counts = np.unique(codes[~known], return_counts=True)
                unknown.update({chr(int(c)): int(n)
                                for c, n in zip(missing, counts, strict=True)})
                if self.unknown == "drop":
                    chunk = chunk[known]
            ids[kept:kept + len(chunk)] = chunk
            kept += len(chunk)
        return Encoded(ids[:kept], unknown)

    def encode(self, text: str) -> np.ndarray:
        return self.encode_report(text).ids

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise TinyLLMError(f"token id out of range for a vocabulary of {self.vocab_size}")
        return "".join(self._decode_table[ids])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "unknown": self.unknown,
                "unknown_id": UNKNOWN_ID, "chars": self.chars}

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=True, indent=1) + "\n")

    @classmethod
    def from_dict(cls, data, source: str = "tokenizer") -> CharTokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TinyLLMError(f"{source} is not a tinyllm character tokenizer")
        if data.get("format_version") != FORMAT_VERSION:
            raise TinyLLMError(f"{source} has unsupported format_version "
                               f"{data.get('format_version')!r} (this tinyllm reads "
                               f"{FORMAT_VERSION})")
        chars = data.get("chars")
        if not isinstance(chars, list) or not all(isinstance(c, str) for c in chars):
            raise TinyLLMError(f"{source}: 'chars' must be a list of single characters")
        try:
            return cls(chars, data.get("unknown", "replace"))
        except TinyLLMError as exc:
            raise TinyLLMError(f"{source}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        return cls.from_dict(read_json(path, "tokenizer file"), str(path))


def _codepoints(text: str) -> np.ndarray:
    try:
        encoded = text.encode("utf-32-le")
    except UnicodeEncodeError:  # lone surrogates: only then is the text scanned for them
        encoded = replace_undecodable(text).encode("utf-32-le")
    return np.frombuffer(encoded, dtype=np.uint32)


def replace_undecodable(text: str) -> str:
    """Undecodable input bytes reach us as lone surrogates (argv, surrogateescape stdin): make
    them U+FFFD, an unknown character like any other, printable and JSON-safe."""
    return LONE_SURROGATE.sub(UNKNOWN_TEXT, text)


def describe_unknown(unknown: Counter, policy: str, limit: int = 10) -> str:
    """A short human line such as: 2 characters outside the vocabulary were replaced: 'é'×2."""
    shown = ", ".join(f"{c!r}×{n}" for c, n in unknown.most_common(limit))
    more = "" if len(unknown) <= limit else f" and {len(unknown) - limit} more"
    verb = "replaced by \ufffd" if policy == "replace" else "dropped"
    return f"{sum(unknown.values())} characters outside the vocabulary were {verb}: {shown}{more}"


def save_tokens(path: str | Path, ids: np.ndarray) -> None:
    """Token ids as raw little-endian integers; the tokenizer's token_dtype says how to read."""
    atomic_write_bytes(path, np.ascontiguousarray(ids).astype(ids.dtype.newbyteorder("<"))
                       .tobytes())


def load_tokens(path: str | Path, tokenizer: CharTokenizer) -> np.ndarray:
    """Memory-map a token file written by save_tokens."""
    path = Path(path)
    if not path.exists():
        raise TinyLLMError(f"token file not found: {path}")
    dtype = tokenizer.token_dtype.newbyteorder("<")
    if path.stat().st_size % dtype.itemsize:
        raise TinyLLMError(f"token file {path} is truncated (size is not a multiple of "
                           f"{dtype.itemsize} bytes)")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")

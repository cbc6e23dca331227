"""Reading a text corpus from disk, cleaning it, and holding out validation/test text.

Validation and test are held out by whole works, so evaluation measures text the model never saw;
a corpus of one or two files falls back to contiguous slices at line boundaries.
"""

from __future__ import annotations

import logging
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from tinyllm.errors import TinyLLMError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
FALLBACK_ENCODINGS = ("utf-8", "cp1252", "latin-1")
SPLITS = TRAIN, VAL, TEST = ("train", "val", "test")


@dataclass
class Document:
    name: str
    text: str
    encoding: str


def decode_bytes(data: bytes, source: str) -> tuple[str, str]:
    """Decode a file's bytes, trying utf-8 (with or without BOM), cp1252, then latin-1."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16"), "utf-16"
    if b"\x00" in data:
        raise TinyLLMError(f"{source} looks binary (it contains NUL bytes); expected a text file")
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="strict"), "utf-8-sig"
    for encoding in FALLBACK_ENCODINGS:
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding != "utf-8":
            log.warning("%s is not valid UTF-8; decoded it as %s", source, encoding)
        return text, encoding
    raise AssertionError("latin-1 decodes any bytes")


def read_text_file(path: Path) -> Document:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TinyLLMError(f"cannot read {path}: {exc.strerror or exc}") from None
    text, encoding = decode_bytes(data, str(path))
    return Document(name=path.stem, text=text, encoding=encoding)


def text_files_under(directory: Path) -> list[Path]:
    """Visible text files below a directory, in a stable order."""
    return sorted(p for p in directory.rglob("*")
                  if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def load_corpus(path: str | Path) -> list[Document]:
    """Load one text file or every text file under a directory; rejects unusable input."""
    path = Path(path)
    if not path.exists():
        raise TinyLLMError(f"corpus path not found: {path}")
    if path.is_dir():
        files = text_files_under(path)
        if not files:
            raise TinyLLMError(
                f"no text files ({', '.join(TEXT_SUFFIXES)}) found under directory {path}")
    else:
        files = [path]
    documents = []
    for file in files:
        document = read_text_file(file)
        if document.text.strip():
            documents.append(document)
        elif path.is_dir():
            log.warning("skipping empty file %s", file)
    if not documents:
        raise TinyLLMError(f"corpus {path} is empty (no non-whitespace text)")
    return documents


_STAGE_DIRECTION = re.compile(r"\[[^\[\]]*\]")


def clean_text(text: str, *, normalization: str = "NFC", drop_stage_directions: bool = False,
               collapse_blank_lines: bool = True) -> str:
    """Normalise newlines and Unicode, optionally drop [stage directions] and blank-line runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if normalization != "none":
        text = unicodedata.normalize(normalization, text)
    if drop_stage_directions:
        text = _STAGE_DIRECTION.sub("", text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    if collapse_blank_lines:
        text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def _cut_at_line(text: str, position: int) -> int:
    """The index just after the newline nearest to position (or position itself if none)."""
    newline = text.rfind("\n", 0, position)
    return newline + 1 if newline > 0 else position


def split_contiguous(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Single-text fallback: train is the head, then validation, then test at the tail."""
    n = len(text)
    val_start = _cut_at_line(text, round(n * (1 - val_fraction - test_fraction)))
    test_start = _cut_at_line(text, round(n * (1 - test_fraction)))
    if not 0 < val_start < test_start < n:
        raise TinyLLMError(f"corpus too small to split ({n} characters)")
    return {"train": text[:val_start], "val": text[val_start:test_start],
            "test": text[test_start:]}


def split_by_works(documents: list[Document], val_fraction: float, test_fraction: float,
                   seed: int) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Assign whole works to test, then val, in a seeded random order; the rest is train.

    Returns the split texts and which works went where. With fewer than three works there is
    no whole-work split that leaves something for each split, so the joined text is sliced.
    """
    if len(documents) < 3:
        joined = "\n".join(d.text for d in documents)
        names = [d.name for d in documents]
        return split_contiguous(joined, val_fraction, test_fraction), {s: names for s in SPLITS}
    order = sorted(documents, key=lambda d: d.name)
    random.Random(seed).shuffle(order)
    total = sum(len(d.text) for d in documents)
    assigned: dict[str, list[Document]] = {split: [] for split in SPLITS}
    remaining = list(order)
    for split, fraction in (("test", test_fraction), ("val", val_fraction)):
        held = 0
        while len(remaining) > 1 and (not assigned[split] or held < fraction * total):
            assigned[split].append(remaining.pop())
            held += len(assigned[split][-1].text)
    assigned["train"] = remaining
    if not assigned["train"]:
        raise TinyLLMError("no works left for training; lower data.val_fraction/test_fraction")
    texts = {split: "\n".join(d.text for d in docs) for split, docs in assigned.items()}
    return texts, {split: [d.name for d in docs] for split, docs in assigned.items()}


def split_stats(text: str) -> dict[str, int]:
    return {"characters": len(text), "lines": text.count("\n"),
            "distinct_characters": len(set(text))}

"""CharTokenizer: round trips, unknown-character policies, JSON storage and token files."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from tinyllm.errors import TinyLLMError
from tinyllm.tokenizer import (
    UNKNOWN_ID,
    UNKNOWN_TEXT,
    CharTokenizer,
    load_tokens,
    save_tokens,
)


def test_fit_encode_decode_round_trip(tokenizer, tiny_text):
    ids = tokenizer.encode(tiny_text)
    assert len(ids) == len(tiny_text)
    assert tokenizer.decode(ids) == tiny_text
    assert tokenizer.vocab_size == len(set(tiny_text)) + 1
    assert UNKNOWN_ID not in ids


def test_ids_follow_sorted_characters():
    tok = CharTokenizer.fit("cab")
    assert tok.encode("abc").tolist() == [1, 2, 3]


def test_save_load_json_round_trip(tmp_path, tokenizer, tiny_text):
    path = tmp_path / "tokenizer.json"
    tokenizer.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))  # plain JSON, not a pickle
    assert data["chars"] == tokenizer.chars
    loaded = CharTokenizer.load(path)
    assert loaded.chars == tokenizer.chars and loaded.unknown == tokenizer.unknown
    assert np.array_equal(loaded.encode(tiny_text), tokenizer.encode(tiny_text))


def test_unknown_characters_replaced_by_id_zero():
    tok = CharTokenizer.fit("abc", unknown="replace")
    report = tok.encode_report("axbyx")
    assert report.ids.tolist() == [1, UNKNOWN_ID, 2, UNKNOWN_ID, UNKNOWN_ID]
    assert report.unknown == {"x": 2, "y": 1}
    assert tok.decode(report.ids) == f"a{UNKNOWN_TEXT}b{UNKNOWN_TEXT}{UNKNOWN_TEXT}"


def test_unknown_characters_dropped():
    tok = CharTokenizer.fit("abc", unknown="drop")
    report = tok.encode_report("axbyc")
    assert tok.decode(report.ids) == "abc"
    assert report.unknown == {"x": 1, "y": 1}


def test_characters_beyond_the_vocabulary_ends_are_unknown():
    tok = CharTokenizer.fit("mn")
    assert tok.encode("a\U0001F600z").tolist() == [UNKNOWN_ID] * 3


def test_ids_are_uint16(tokenizer):
    assert tokenizer.encode("ROMEO").dtype == np.uint16
    assert tokenizer.token_dtype == np.uint16


def test_decode_rejects_out_of_range_ids(tokenizer):
    with pytest.raises(TinyLLMError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])


def test_token_file_round_trip_is_memmap(tmp_path, tokenizer, tiny_text):
    ids = tokenizer.encode(tiny_text)
    path = tmp_path / "train.bin"
    save_tokens(path, ids)
    assert path.stat().st_size == 2 * len(ids)
    loaded = load_tokens(path, tokenizer)
    assert isinstance(loaded, np.memmap)
    assert np.array_equal(loaded, ids)


def test_truncated_token_file_is_rejected(tmp_path, tokenizer):
    path = tmp_path / "train.bin"
    path.write_bytes(b"\x01\x00\x02")
    with pytest.raises(TinyLLMError, match="truncated"):
        load_tokens(path, tokenizer)


def test_missing_token_file_is_rejected(tmp_path, tokenizer):
    with pytest.raises(TinyLLMError, match="not found"):
        load_tokens(tmp_path / "absent.bin", tokenizer)


def test_encoding_five_megabytes_is_fast(tokenizer, tiny_text):
    text = (tiny_text * (5_000_000 // len(tiny_text) + 1))[:5_000_000]
    started = time.perf_counter()
    ids = tokenizer.encode(text)
    elapsed = time.perf_counter() - started
    assert len(ids) == 5_000_000
    # A guard against a per-character slow path, not a benchmark: 0.55 s on our quiet 2-core
    # machine and 1.09 s pinned to one core beside the rest of the suite, so the bound holds on
    # a machine half as fast under load (it was 1.0 s, and failed there).
    assert elapsed < 3.0


@pytest.mark.parametrize(("policy", "ids"), [("replace", [1, 2, 0, 3, 1, 0, 0, 0, 0, 2]),
                                             ("drop", [1, 2, 3, 1, 2])])
def test_chunk_boundaries_change_nothing(monkeypatch, policy, ids):
    """encode_report encodes a chunk at a time (memory follows the chunk, not the text)."""
    import tinyllm.tokenizer

    tokenizer = CharTokenizer.fit("abc", unknown=policy)
    text = "abxcay\ud800zzb"  # unknown characters in several chunks, a lone surrogate in one
    for chunk in (2, 3, 1 << 20):
        monkeypatch.setattr(tinyllm.tokenizer, "ENCODE_CHUNK", chunk)
        encoded = tokenizer.encode_report(text)
        assert encoded.ids.tolist() == ids and encoded.ids.dtype == np.uint16
        assert encoded.unknown == {"x": 1, "y": 1, UNKNOWN_TEXT: 1, "z": 2}


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not readable JSON"),
    ('["a", "b"]', "not a tinyllm character tokenizer"),
    ('{"format": "something-else", "format_version": 1, "chars": ["a"]}',
     "not a tinyllm character tokenizer"),
    ('{"format": "tinyllm.char-tokenizer", "format_version": 99, "chars": ["a"]}',
     "unsupported format_version 99"),
    ('{"format": "tinyllm.char-tokenizer", "format_version": 1, "chars": "abc"}', "'chars'"),
    ('{"format": "tinyllm.char-tokenizer", "format_version": 1, "chars": []}', "non-empty"),
    ('{"format": "tinyllm.char-tokenizer", "format_version": 1, "chars": ["a", "a"]}',
     "distinct"),
    ('{"format": "tinyllm.char-tokenizer", "format_version": 1, "chars": ["ab"]}',
     "single characters"),
])
def test_corrupted_tokenizer_file_is_rejected(tmp_path, content, message):
    path = tmp_path / "tokenizer.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(TinyLLMError, match=message) as error:
        CharTokenizer.load(path)
    assert str(path) in str(error.value)


def test_undecodable_input_bytes_are_unknown_characters(tokenizer):
    """Bytes that were not UTF-8 arrive as lone surrogates (argv, surrogateescape stdin)."""
    encoded = tokenizer.encode_report(b"ROMEO \xff".decode("utf-8", "surrogateescape"))
    assert encoded.unknown == {"\ufffd": 1}
    assert list(encoded.ids[:-1]) == list(tokenizer.encode("ROMEO "))


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(TinyLLMError, match="tokenizer file not found"):
        CharTokenizer.load(tmp_path / "tokenizer.json")


def test_unknown_policy_is_validated():
    with pytest.raises(TinyLLMError, match="policy"):
        CharTokenizer.fit("abc", unknown="ignore")

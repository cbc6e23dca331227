"""Corpus loading (encodings, rejected inputs), cleaning, and whole-work splits."""

from __future__ import annotations

import logging

import pytest

from tinyllm.corpus import Document, clean_text, load_corpus, split_by_works
from tinyllm.errors import TinyLLMError


def test_load_corpus_single_file(tmp_path):
    path = tmp_path / "hamlet.txt"
    path.write_text("To be, or not to be.\n", encoding="utf-8")
    [doc] = load_corpus(path)
    assert (doc.name, doc.text, doc.encoding) == ("hamlet", "To be, or not to be.\n", "utf-8")


def test_load_corpus_directory_reads_text_files_in_order(tmp_path):
    (tmp_path / "b.txt").write_text("bee\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.md").write_text("ay\n")
    (tmp_path / "notes.csv").write_text("x,y\n")
    (tmp_path / ".hidden.txt").write_text("secret\n")
    docs = load_corpus(tmp_path)
    assert [d.text for d in docs] == ["bee\n", "ay\n"]


def test_utf8_bom_is_stripped(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\n")
    [doc] = load_corpus(path)
    assert doc.text == "hello\n"
    assert doc.encoding == "utf-8-sig"


def test_utf16_with_bom_is_decoded(tmp_path):
    path = tmp_path / "wide.txt"
    path.write_bytes("héllo\n".encode("utf-16"))
    [doc] = load_corpus(path)
    assert doc.text == "héllo\n"


def test_cp1252_fallback_logs_a_warning(tmp_path, caplog):
    path = tmp_path / "windows.txt"
    path.write_bytes(b"caf\xe9 \x93quoted\x94\n")
    with caplog.at_level(logging.WARNING, logger="tinyllm.corpus"):
        [doc] = load_corpus(path)
    assert doc.text == "café \u201cquoted\u201d\n"
    assert doc.encoding == "cp1252"
    assert any("cp1252" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def test_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path, caplog):
    path = tmp_path / "odd.txt"
    path.write_bytes(b"abc \x81\x8d def\n")  # 0x81 and 0x8d are unassigned in cp1252
    with caplog.at_level(logging.WARNING, logger="tinyllm.corpus"):
        [doc] = load_corpus(path)
    assert doc.encoding == "latin-1"
    assert doc.text == "abc \x81\x8d def\n"
    assert any("latin-1" in r.getMessage() for r in caplog.records)


def test_missing_corpus_path(tmp_path):
    with pytest.raises(TinyLLMError, match="corpus path not found"):
        load_corpus(tmp_path / "nothing")


@pytest.mark.parametrize("content", [b"", b"  \n\t\n\n"])
def test_empty_or_whitespace_corpus_is_rejected(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(TinyLLMError, match="is empty"):
        load_corpus(path)


def test_directory_without_text_files_is_rejected(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(TinyLLMError, match="no text files"):
        load_corpus(tmp_path)


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "image.txt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(TinyLLMError, match="binary"):
        load_corpus(path)


def test_clean_text_drops_stage_directions_including_multiline():
    text = "ROMEO: Soft! [Aside] Speak.\n[Enter JULIET\nabove, at a window]\nJULIET: Ay me.\n"
    cleaned = clean_text(text, drop_stage_directions=True)
    assert "[" not in cleaned and "]" not in cleaned
    assert "Aside" not in cleaned and "window" not in cleaned
    assert "ROMEO: Soft!  Speak.\n" in cleaned
    assert "JULIET: Ay me.\n" in cleaned


def test_clean_text_keeps_stage_directions_by_default():
    assert "[Exit]" in clean_text("Farewell. [Exit]\n")


def test_clean_text_collapses_blank_lines_and_crlf():
    assert clean_text("a\r\n\r\n\r\n\r\nb\rc  \n") == "a\n\nb\nc\n"
    assert clean_text("a\n\n\n\nb\n", collapse_blank_lines=False) == "a\n\n\n\nb\n"


def test_clean_text_nfkc_and_nfc():
    assert clean_text("\ufb01ne \uff21", normalization="NFKC") == "fine A\n"
    assert clean_text("e\u0301", normalization="NFC") == "\u00e9\n"
    assert clean_text("e\u0301", normalization="none") == "e\u0301\n"


def _works(count: int) -> list[Document]:
    return [Document(f"work{i:02d}", f"line of work {i}\n" * (5 + 3 * i), "utf-8")
            for i in range(count)]


def test_split_by_works_is_deterministic_under_the_seed():
    docs = _works(10)
    assert split_by_works(docs, 0.1, 0.1, seed=7) == split_by_works(docs, 0.1, 0.1, seed=7)
    assert split_by_works(docs, 0.1, 0.1, seed=1)[1] != split_by_works(docs, 0.1, 0.1, seed=2)[1]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_split_by_works_assigns_whole_works(seed):
    docs = _works(10)
    texts, assignment = split_by_works(docs, 0.1, 0.1, seed=seed)
    names = [name for split in ("train", "val", "test") for name in assignment[split]]
    assert sorted(names) == sorted(d.name for d in docs)  # each work in exactly one split
    assert assignment["val"] and assignment["test"]
    assert len(texts["train"]) > len(texts["val"]) and len(texts["train"]) > len(texts["test"])
    by_name = {d.name: d.text for d in docs}
    for split, members in assignment.items():
        assert texts[split] == "\n".join(by_name[n] for n in members)


def test_fewer_than_three_works_fall_back_to_contiguous_line_slices():
    docs = [Document("a", "".join(f"first {i}\n" for i in range(60)), "utf-8"),
            Document("b", "".join(f"second {i}\n" for i in range(40)), "utf-8")]
    texts, _ = split_by_works(docs, 0.1, 0.1, seed=0)
    joined = "\n".join(d.text for d in docs)
    assert texts["train"] + texts["val"] + texts["test"] == joined
    assert all(texts[s] for s in ("train", "val", "test"))
    assert texts["train"].endswith("\n") and texts["val"].endswith("\n")
    assert len(texts["train"]) > len(texts["val"]) + len(texts["test"])

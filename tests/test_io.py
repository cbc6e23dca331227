"""The file hashes: read a block at a time, they equal hashing the whole bytes at once."""

from __future__ import annotations

import hashlib

from tinyllm.io import file_sha256, fingerprint_files


def test_file_sha256_over_several_blocks_is_the_whole_files_hash(tmp_path):
    data = bytes(range(256)) * (5 << 12)  # 5 MiB: several blocks and a partial last one
    data += b"tail"
    (tmp_path / "weights.pt").write_bytes(data)
    assert file_sha256(tmp_path / "weights.pt") == hashlib.sha256(data).hexdigest()


def test_fingerprint_files_hashes_names_and_contents_in_order(tmp_path):
    a, b = tmp_path / "train.bin", tmp_path / "val.bin"
    a.write_bytes(b"\x01" * 3_000_000)
    b.write_bytes(b"\x02")
    whole = hashlib.sha256(b"train.bin" + a.read_bytes() + b"val.bin" + b.read_bytes())
    assert fingerprint_files([a, b]) == whole.hexdigest()[:16]
    assert fingerprint_files([b, a]) != fingerprint_files([a, b])

"""Atomic writes: a reader sees the old file or the new one, never half of one.

Each write goes to a temporary file in the destination's directory, is flushed to disk, then
renamed over the destination (rename is atomic within one filesystem).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tinyllm.errors import TinyLLMError

log = logging.getLogger(__name__)

SET_ASIDE_KEPT = 3  # set-aside copies of a file kept beside it; older ones are deleted


def set_aside(path: Path, keep: int = SET_ASIDE_KEPT) -> Path:
    """Rename a file to `<stem>.set-aside-<time><suffix>` beside it and return the new path.

    Fresh starts set the previous checkpoint aside rather than delete it; keeping the `keep`
    most recently set aside (this one included) stops them piling up.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.stem}.set-aside-{stamp}{path.suffix}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.stem}.set-aside-{stamp}-{n}{path.suffix}")
    path.rename(aside)
    earlier = [p for p in path.parent.glob(f"{path.stem}.set-aside-*{path.suffix}") if p != aside]
    earlier.sort(key=lambda p: (p.stat().st_ctime_ns, p.name))  # a rename sets the ctime
    for old in earlier[:max(0, len(earlier) - (keep - 1))]:
        old.unlink()
        log.info("deleted %s (only the %d most recently set aside are kept)", old, keep)
    return aside


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_path), fsync it, then rename it onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def replace_directory(staging: Path, target: Path) -> None:
    """Move a fully written staging directory into place, replacing target.

    The old target is renamed aside first. A process killed between the two renames leaves
    only the aside copy, which `current_directory` reads and the next replace puts back, so a
    reader always finds the complete old directory or the complete new one.
    """
    target = Path(target)
    old = _aside(target)
    if old.exists() and not target.exists():  # an earlier replace died between its renames
        os.replace(old, target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


def current_directory(target: str | Path) -> Path:
    """target, or its aside copy when a replace_directory was killed halfway."""
    target = Path(target)
    old = _aside(target)
    return old if old.is_dir() and not target.exists() else target


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def staging_directory(target: Path) -> Path:
    """A fresh empty directory beside target to build its replacement in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def _hash_into(digest, path: str | Path) -> None:
    """Feed a file's bytes to a hashlib digest a MiB at a time (token files can be large)."""
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    _hash_into(digest, path)
    return digest.hexdigest()


def fingerprint_files(paths) -> str:
    """A short content hash of several files, in order: identifies the data a model saw."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).name.encode())
        _hash_into(digest, path)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def exclusive_lock(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock on `path` (created if missing) across processes, where supported.

    Where it cannot be taken (no fcntl, a read-only directory, a filesystem without locks) the
    block runs unlocked: callers lose only the cross-process ordering, never the operation.
    """
    with contextlib.ExitStack() as held:
        try:
            import fcntl

            handle = held.enter_context(open(path, "a"))
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the handle closes
        except (ImportError, OSError) as exc:  # Windows, read-only, no locks on this filesystem
            log.debug("going on without the lock %s: %s", path, exc)
        yield


def read_json(path: str | Path, what: str):
    """Parse a JSON file; a missing or malformed one is a TinyLLMError naming it as `what`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TinyLLMError(f"{what} not found: {path}") from None
    except (OSError, ValueError) as exc:
        raise TinyLLMError(f"{what} {path} is not readable JSON: {exc}") from None

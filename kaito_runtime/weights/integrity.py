"""Whether a file's bytes are the ones the Hub lists: size, then sha256 (LFS) or git blob sha1."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kaito_runtime.hub import RemoteFile
from kaito_runtime.types import MiB


def new_hasher(f: RemoteFile) -> Any | None:
    """A hash object whose digest must equal ``expected_digest(f)``, or None (nothing to check)."""
    if f.sha256:
        return hashlib.sha256()
    if f.blob_id:
        return hashlib.sha1(f"blob {f.size}\0".encode())
    return None


def expected_digest(f: RemoteFile) -> str | None:
    return f.sha256 or f.blob_id


def hash_file(path: Path, h: Any, limit: int | None = None) -> str:
    """Feed ``h`` the file's bytes (its first ``limit`` bytes) and return the hex digest."""
    left = limit
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MiB if left is None else min(4 * MiB, left)):
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def size_is(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def file_ok(folder: Path, f: RemoteFile) -> bool:
    """``folder / f.path`` has the listed size and hash (re-reads the whole file)."""
    path = folder / f.path
    if not size_is(path, f.size):
        return False
    h = new_hasher(f)
    return h is None or hash_file(path, h) == expected_digest(f)


def bad_files(folder: Path, files: Sequence[RemoteFile]) -> list[RemoteFile]:
    """The files of ``files`` under ``folder`` whose size or hash is wrong (hashed in parallel)."""
    if not files:
        return []
    workers = max(1, min(4, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large buffers
        oks = list(pool.map(lambda f: file_ok(folder, f), files))
    return [f for f, ok in zip(files, oks) if not ok]

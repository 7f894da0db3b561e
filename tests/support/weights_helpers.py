"""Helpers shared by the weights-step tests (tests/weights/, tests/hub/, ...)."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kaito_runtime.hub import RemoteFile
from kaito_runtime.types import WeightsSource


def spec(repo_id: str | None = "org/tiny", *, revision: str | None = None, load_format: str = "hf", local_path: str | None = None) -> WeightsSource:
    """What the weights step is given: a repo at a revision (or a folder) and a load format."""
    return WeightsSource(
        name="test-model",
        repo_id=repo_id,
        revision=revision,
        load_format=load_format,  # type: ignore[arg-type]
        local_path=local_path,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def remote_file(hub: object, repo_id: str, path: str) -> RemoteFile:
    e = hub.file_entry(repo_id, path)  # type: ignore[attr-defined]
    return RemoteFile(e.path, e.size, e.blob_sha1, e.sha256)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (yields its URL)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, name="silent-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@contextmanager
def no_writes_under(root: Path, code: int = errno.EROFS) -> Iterator[list[str]]:
    """Make every write primitive fail with ``code`` for paths under ``root`` (what a read-only
    volume or a folder owned by someone else does, even to root, which chmod does not stop).

    Covers ``open``/``os.open`` in a writing mode (so ``Path.write_*``, ``tempfile``, ``filelock``),
    ``mkdir``, ``replace``/``rename``, ``unlink``/``remove``/``rmdir``, ``truncate`` and
    ``shutil.rmtree``. Yields the list of the paths a write was attempted on.
    """
    prefix = os.path.abspath(root)
    attempts: list[str] = []

    def guard(path: object) -> None:
        try:
            text = os.path.abspath(os.fspath(path))  # type: ignore[arg-type]
        except TypeError:
            return  # a file descriptor
        if text == prefix or text.startswith(prefix + os.sep):
            attempts.append(text)
            raise OSError(code, os.strerror(code), text)

    def wrap(real, *, paths=(0,), writing=lambda *a, **k: True):  # type: ignore[no-untyped-def]
        def fake(*args, **kwargs):  # type: ignore[no-untyped-def]
            if writing(*args, **kwargs):
                for i in paths:
                    if len(args) > i:
                        guard(args[i])
            return real(*args, **kwargs)

        return fake

    def open_writes(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        return any(c in mode for c in "wax+")

    def os_open_writes(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        return bool(flags & _WRITE_FLAGS)

    real_open = builtins.open
    with pytest.MonkeyPatch.context() as m:
        m.setattr(builtins, "open", wrap(real_open, writing=open_writes))
        m.setattr(io, "open", wrap(real_open, writing=open_writes))
        m.setattr(os, "open", wrap(os.open, writing=os_open_writes))
        for name in ("mkdir", "unlink", "remove", "rmdir", "truncate"):
            m.setattr(os, name, wrap(getattr(os, name)))
        for name in ("replace", "rename"):
            m.setattr(os, name, wrap(getattr(os, name), paths=(0, 1)))
        m.setattr(shutil, "rmtree", wrap(shutil.rmtree))
        yield attempts


@contextmanager
def read_only_volume(root: Path) -> Iterator[list[str]]:
    """``root`` as a read-only mount, as the kernel answers for one even to root: every write
    fails with EROFS (``no_writes_under``) and ``os.access`` refuses W_OK under it."""
    prefix = os.path.abspath(root)
    real_access = os.access

    def access(path, mode, *args, **kwargs):  # type: ignore[no-untyped-def]
        text = os.path.abspath(os.fspath(path))
        if mode & os.W_OK and (text == prefix or text.startswith(prefix + os.sep)):
            return False
        return real_access(path, mode, *args, **kwargs)

    with no_writes_under(root) as attempts, pytest.MonkeyPatch.context() as m:
        m.setattr(os, "access", access)
        yield attempts

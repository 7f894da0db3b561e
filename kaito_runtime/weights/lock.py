"""One downloader per repo and commit on a weights volume; the others wait, within bounds.

The lock is a ``filelock`` file next to the commit folder. A launcher that finds it held waits,
logging every ``LOCK_LOG_INTERVAL_S`` seconds, and gives up with a WeightsError once the holder's
folder has not grown for the lock timeout (``KAITO_WEIGHTS_LOCK_TIMEOUT``, default an hour): a
long download that makes progress is waited for, a stuck one is not.

``filelock`` locks with ``flock``: the kernel drops the lock when its holder dies, so a held lock
always has a live holder. That is why the timeout message never suggests deleting the lock file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime.numbers import WEIGHTS_LOCK_TIMEOUT, seconds
from kaito_runtime.request.settle import DEFAULT_LOCK_TIMEOUT_S, LOCK_TIMEOUT_ENV
from kaito_runtime.settings import seconds_from_env
from kaito_runtime.errors import WeightsError
from kaito_runtime.types import format_bytes as fmt_bytes
from kaito_runtime.weights.store import folder_bytes, lock_path

if TYPE_CHECKING:
    from filelock import BaseFileLock

LOCK_LOG_INTERVAL_S = 30.0


def lock_timeout_s(given: float | None = None, env: Mapping[str, str] | None = None) -> float:
    """``given``, else ``KAITO_WEIGHTS_LOCK_TIMEOUT`` from ``env`` (default: the process
    environment), else the default (seconds without progress)."""
    if given is not None:
        return seconds(given, WEIGHTS_LOCK_TIMEOUT, name="the weights lock timeout", fix=f"set {LOCK_TIMEOUT_ENV} within range")
    return seconds_from_env(
        os.environ if env is None else env, LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S, WEIGHTS_LOCK_TIMEOUT
    )


@contextmanager
def download_lock(root: Path, commit: str, folder: Path, *, what: str, timeout_s: float, log: logging.Logger) -> Iterator[None]:
    """Hold the download lock of ``root``/``commit`` while inside; ``folder`` is what the holder fills."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path(root, commit)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("weights: another launcher is downloading %s into %s; waiting for it", what, folder)
        _wait(lock, folder, what=what, timeout_s=timeout_s, log=log)
    try:
        yield
    finally:
        lock.release()


def _wait(lock: BaseFileLock, folder: Path, *, what: str, timeout_s: float, log: logging.Logger) -> None:
    from filelock import Timeout

    start = progressed = time.monotonic()
    seen = folder_bytes(folder)
    while True:
        step = max(0.0, min(LOCK_LOG_INTERVAL_S, progressed + timeout_s - time.monotonic()))
        try:
            lock.acquire(timeout=step)
            return
        except Timeout:
            pass
        now = time.monotonic()
        size = folder_bytes(folder)
        if size != seen:
            seen, progressed = size, now
        elif now - progressed >= timeout_s:
            path = lock.lock_file
            raise WeightsError(
                f"Gave up waiting for another launcher's download of {what} after {now - start:.0f}s",
                why=f"the lock {path} stayed held and {folder} did not grow for {timeout_s:g}s; a held lock "
                "means its holder is alive (the kernel releases the lock of a process that died)",
                fix="find the other launcher sharing this weights volume (another pod or container mounting it) "
                f"and check why its download is stuck, or raise {LOCK_TIMEOUT_ENV} if it is only slow; do not "
                "delete the lock file (a second launcher would then write the same files)",
            )
        log.info(
            "weights: still waiting for %s held by another launcher (%.0fs; %s in %s so far)",
            lock.lock_file, now - start, fmt_bytes(size), folder,
        )

"""How a running download reports itself: one bar on a TTY, or a log line every few seconds."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from kaito_runtime.hub import RemoteFile
from kaito_runtime.units import format_bytes as fmt_bytes
from kaito_runtime.weights_store import bytes_on_disk

ProgressMode = Literal["auto", "bar", "log", "none"]
DEFAULT_PROGRESS_INTERVAL_S = 5.0


class ProgressLogger:
    """Logs bytes on disk (finished + partial files) every ``interval`` seconds, from a thread."""

    def __init__(self, folder: Path, files: Sequence[RemoteFile], baseline: int, log: logging.Logger, interval: float):
        self.folder, self.files, self.baseline, self.log, self.interval = folder, files, baseline, log, interval
        self.total = sum(f.size for f in files)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-progress", daemon=True)
        self._t0 = time.monotonic()

    def _line(self) -> None:
        done = bytes_on_disk(self.folder, self.files)
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = max(done - self.baseline, 0) / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        self.log.info(
            "weights: %s / %s (%.0f%%), %s/s, ETA %s",
            fmt_bytes(done), fmt_bytes(self.total), pct, fmt_bytes(rate), eta,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._line()

    def __enter__(self) -> ProgressLogger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ProgressBar:
    """One bar for the whole model (TTY), fed by the downloader's byte counts."""

    def __init__(self, total: int, initial: int) -> None:
        from huggingface_hub.utils import tqdm as hf_tqdm

        self._bar = hf_tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="weights")
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

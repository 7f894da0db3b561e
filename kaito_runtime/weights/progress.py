"""How a running download reports itself: one bar on a TTY, or a log line every few seconds.

Both read a ``TransferCount`` that the downloader moves with every chunk it receives (about
64 KiB, see ``hub.RECEIVE_CHUNK_BYTES``), so bytes, rate and ETA move while a file is still
arriving rather than once per finished file or buffered block.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Literal

from kaito_runtime.types import format_bytes as fmt_bytes

ProgressMode = Literal["auto", "bar", "log", "none"]
DEFAULT_PROGRESS_INTERVAL_S = 5.0
DEFAULT_RATE_WINDOW_S = 15.0


class TransferCount:
    """Bytes held of each file being fetched (on disk or just received); thread-safe.

    The downloader calls ``add`` per chunk received and ``restart`` when a file starts over (its
    partial resumed at some size, or discarded). ``on_change`` gets every change of the total
    (a bar's update).
    """

    def __init__(
        self,
        held: Mapping[str, int],
        *,
        on_change: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._held = dict(held)
        self._total_held = sum(self._held.values())
        self._received = 0
        self._last_received_at: float | None = None
        self._on_change, self._clock = on_change, clock
        self._lock = threading.Lock()

    def add(self, path: str, n: int) -> None:
        """``n`` bytes of ``path`` arrived (negative: the file was cut back, e.g. truncated)."""
        if n == 0:
            return
        with self._lock:
            self._held[path] = self._held.get(path, 0) + n
            self._total_held += n
            if n > 0:
                self._received += n
                self._last_received_at = self._clock()
            if self._on_change:
                self._on_change(n)

    def restart(self, path: str, held: int = 0) -> None:
        """``path`` starts (again) with ``held`` bytes on disk."""
        with self._lock:
            delta = held - self._held.get(path, 0)
            self._held[path] = held
            self._total_held += delta
            if delta and self._on_change:
                self._on_change(delta)

    def snapshot(self) -> tuple[int, int, float | None]:
        """(bytes held, bytes received in this run, when the last byte arrived)."""
        with self._lock:
            return self._total_held, self._received, self._last_received_at


def format_eta(seconds: float) -> str:
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class RateWindow:
    """Bytes per second over about the last ``window_s`` seconds of (time, bytes received) samples."""

    def __init__(self, window_s: float, t0: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque([(t0, 0)])

    def rate(self, now: float, received: int) -> float:
        self._samples.append((now, received))
        # Keep the newest sample at or before the window's start (the rate spans the whole window).
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()
        t_old, b_old = self._samples[0]
        return max(received - b_old, 0) / (now - t_old) if now > t_old else 0.0


class ProgressLogger:
    """Logs the bytes held, the recent rate and the ETA every ``interval`` seconds, from a thread.

    ETA is "?" only until the first byte arrives; when nothing arrived during the rate window, the
    line says for how long, and the ETA falls back to the average rate since the start.
    """

    def __init__(
        self,
        count: TransferCount,
        total: int,
        log: logging.Logger,
        interval: float,
        *,
        window_s: float = DEFAULT_RATE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.count, self.total, self.log, self.interval, self._clock = count, total, log, interval, clock
        self._t0 = clock()
        self._window = RateWindow(window_s, self._t0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-progress", daemon=True)

    def line(self) -> str:
        now = self._clock()
        held, received, last_at = self.count.snapshot()
        held = min(max(held, 0), self.total)
        rate = self._window.rate(now, received)
        left = self.total - held
        pct = 100.0 * held / self.total if self.total else 100.0
        head = f"weights: {fmt_bytes(held)} / {fmt_bytes(self.total)} ({pct:.0f}%)"
        if received == 0 or last_at is None:
            return f"{head}, waiting for the first bytes, ETA ?"
        if rate > 0:
            return f"{head}, {fmt_bytes(rate)}/s, ETA {format_eta(left / rate)}"
        average = received / max(now - self._t0, 1e-6)
        return f"{head}, 0 B/s (nothing received for {now - last_at:.0f}s), ETA {format_eta(left / average)}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.log.info("%s", self.line())

    def __enter__(self) -> ProgressLogger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ProgressBar:
    """One bar for the whole model (TTY); ``add`` is a ``TransferCount``'s ``on_change``."""

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

"""Timeouts for every request the Hugging Face client sends.

The client's own HTTP session has none, and some of its calls pass ``timeout=None``. A request
hook sets every request's connect/read/write/pool timeout to ``KAITO_HUB_TIMEOUT`` (default 30 s;
for a download the read timeout is the longest silence between two chunks, not a total). Inside
``bounded`` the client also stops retrying once that long has passed since the call began (a
download: since its last byte), raising HubTimeout, which ``hub`` turns into HubUnreachableError.
The hook is added through the client's public ``set_client_factory``, once per process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from kaito_runtime.errors import InputError

TIMEOUT_ENV = "KAITO_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0


def hub_timeout_s() -> float:
    """Seconds a hub request may wait for a connection or for the next bytes (``KAITO_HUB_TIMEOUT``)."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(
            f"{TIMEOUT_ENV}={raw!r} is not a number of seconds above 0",
            fix=f"set {TIMEOUT_ENV} to e.g. 30, or unset it",
        )
    return value


class HubTimeout(TimeoutError):
    """The hub stayed silent for longer than the timeout (not retried by the client)."""


class _Deadline:
    """A point in time after which no new request is sent; ``extend`` moves it on (progress)."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.at = time.monotonic() + seconds

    def extend(self) -> None:
        self.at = time.monotonic() + self.seconds


_local = threading.local()  # the calling thread's _Deadline (the client's session is synchronous)
_hook_lock = threading.Lock()
_hook_installed = False


def _apply_timeouts(request: Any) -> None:
    """Request hook of the client's session: bounded timeouts on every request, and no retry
    once the current call's deadline has passed."""
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is not None and time.monotonic() > deadline.at:
        raise HubTimeout(
            f"no usable answer from {request.url.host} for {deadline.what} within {deadline.seconds:g}s ({TIMEOUT_ENV})"
        )
    t = deadline.seconds if deadline is not None else hub_timeout_s()
    request.extensions["timeout"] = {"connect": t, "read": t, "write": t, "pool": t}


def install_timeouts() -> None:
    """Add ``_apply_timeouts`` to every session the client creates (once per process)."""
    global _hook_installed
    with _hook_lock:
        if _hook_installed:
            return
        from huggingface_hub import set_client_factory
        from huggingface_hub.utils import _http

        base: Callable[[], Any] = _http.default_client_factory

        def factory() -> Any:
            client = base()
            hooks = client.event_hooks
            client.event_hooks = {"request": [*hooks.get("request", []), _apply_timeouts], "response": hooks.get("response", [])}
            return client

        set_client_factory(factory)
        _hook_installed = True


@contextmanager
def bounded(what: str) -> Iterator[_Deadline]:
    """Calls to the client inside get the hub timeout, and stop retrying after it has passed."""
    install_timeouts()
    previous = getattr(_local, "deadline", None)
    deadline = _Deadline(hub_timeout_s(), what)
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = previous


class ExtendsOnWrite:
    """``out`` as ``http_get`` writes to it: each chunk received moves ``deadline`` on (a download
    fails on silence, never on its total time)."""

    def __init__(self, out: BinaryIO, deadline: _Deadline) -> None:
        self._out, self._deadline = out, deadline

    def write(self, data: bytes) -> int:
        self._deadline.extend()
        return self._out.write(data)

    def __getattr__(self, name: str) -> Any:  # tell, seek, truncate, flush
        return getattr(self._out, name)

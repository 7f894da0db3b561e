"""Timeouts for every request the Hugging Face client sends on our behalf.

The client's own HTTP session has none, and some of its calls pass ``timeout=None``. Inside
``bounded`` the rule is *silence*, as the README says: ``KAITO_HUB_TIMEOUT`` (default 30 s) is the
longest the hub may stay silent, never the total time of a call.

* A request hook sets every request's connect/read/write/pool timeout to that value (for a body
  the read timeout is the longest pause between two chunks).
* The client retries a request that timed out. The hook refuses to send a retry once the hub has
  been silent for the timeout, raising HubTimeout (``hub`` turns it into HubUnreachableError).
* Every answer moves that limit on: a response hook runs at each response's headers and wraps
  its body stream so that each chunk received moves it on too. So a slow hub that keeps
  answering (a tree listing of many pages, a slow HEAD before its GET, a slow but steady
  download) is waited for, however long the whole call takes.

Gap: files above the client's plain-HTTP limit (``hub.download_whole``, Xet for files over
about 50 GB) move their bytes in Xet's own client, which these hooks never see. Their HTTP calls
(HEAD, the Xet token) are bounded, but a stalled Xet transfer is not: only the client's own
retries end it.

Scope. The hooks live in the client's shared session, so they are installed for the whole
process: ``install_timeouts`` wraps whatever client factory is in use (one set by the caller with
``huggingface_hub.set_client_factory``, for a proxy, CA bundle or headers, keeps its settings), and
each ``bounded`` call checks the live session still has them and puts them back if a later
``set_client_factory`` dropped them. Outside ``bounded`` (another thread, or the embedding
application's own client calls) the hooks do nothing, so installing them changes no one else's
requests; that is also why tests need no reset between them.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from kaito_runtime.numbers import HUB_TIMEOUT
from kaito_runtime.settings import seconds_from_env

TIMEOUT_ENV = "KAITO_HUB_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0


def hub_timeout_s(env: Mapping[str, str] | None = None) -> float:
    """Seconds a hub request may wait for a connection or for the next bytes (``KAITO_HUB_TIMEOUT``).

    Read from ``env``, by default the process environment: the deadline is applied inside the
    Hub client's request hooks, which see no caller's mapping, so the process environment is
    what governs real requests."""
    return seconds_from_env(os.environ if env is None else env, TIMEOUT_ENV, DEFAULT_TIMEOUT_S, HUB_TIMEOUT)


_from_caller: list[float] = []  # the timeouts of the callers' environments, innermost last


@contextmanager
def timeout_from(env: Mapping[str, str]) -> Iterator[float]:
    """Inside, hub calls use ``KAITO_HUB_TIMEOUT`` from ``env`` (the API's environment), not the
    process environment. A malformed value is refused here, before any request."""
    seconds = hub_timeout_s(env)
    _from_caller.append(seconds)
    try:
        yield seconds
    finally:
        _from_caller.pop()


def current_timeout_s() -> float:
    """The hub timeout in force: the API caller's (``timeout_from``), else the process environment's."""
    return _from_caller[-1] if _from_caller else hub_timeout_s()


class HubTimeout(TimeoutError):
    """The hub stayed silent for longer than the timeout (not retried by the client)."""


class _Deadline:
    """A point in time after which no new request is sent; ``extend`` moves it on (the hub spoke)."""

    def __init__(self, seconds: float, what: str, *, stops_retries: bool = True) -> None:
        self.seconds, self.what, self.stops_retries = seconds, what, stops_retries
        self.at = time.monotonic() + seconds

    def extend(self) -> None:
        self.at = time.monotonic() + self.seconds


_local = threading.local()  # the calling thread's _Deadline (the client's session is synchronous)
_hook_lock = threading.Lock()
_WRAPPED = "_kaito_hub_timeouts_wraps"  # attribute of our factory wrapper: the factory it wraps
_wrapped_default = False


def _apply_timeouts(request: Any) -> None:
    """Request hook: inside ``bounded``, bounded timeouts on the request, and no (re)try once the
    hub has been silent for the timeout. Outside ``bounded`` it does nothing."""
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is None:
        return
    if deadline.stops_retries and time.monotonic() > deadline.at:
        raise HubTimeout(
            f"no answer from {request.url.host} for {deadline.what} in {deadline.seconds:g}s ({TIMEOUT_ENV})"
        )
    t = deadline.seconds
    request.extensions["timeout"] = {"connect": t, "read": t, "write": t, "pool": t}


def _note_answer(response: Any) -> None:
    """Response hook: the hub answered, so the silence limit starts again, and again with each
    chunk of the body."""
    deadline: _Deadline | None = getattr(_local, "deadline", None)
    if deadline is None:
        return
    deadline.extend()
    stream_class = _extending_stream_class(type(response.stream))
    if stream_class is not None:
        response.stream = stream_class(response.stream, deadline)


@functools.cache
def _extending_stream_class(stream_type: type) -> type | None:
    """A body stream that extends a deadline per chunk, of the client's HTTP library's sync stream
    type (``httpx`` or ``httpx2``, by client version); None for anything else (left unwrapped)."""
    base = next((c for c in stream_type.__mro__ if c.__name__ == "SyncByteStream"), None)
    if base is None:
        return None

    class ExtendingStream(base):  # type: ignore[valid-type, misc]
        def __init__(self, inner: Any, deadline: _Deadline) -> None:
            self._inner, self._deadline = inner, deadline

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self._inner:
                self._deadline.extend()
                yield chunk

        def close(self) -> None:
            self._inner.close()

    return ExtendingStream


def _add_hooks(client: Any) -> Any:
    """``client`` with our hooks after its own (added once; its other settings untouched)."""
    hooks = client.event_hooks
    request, response = list(hooks.get("request", [])), list(hooks.get("response", []))
    if _apply_timeouts not in request or _note_answer not in response:
        if _apply_timeouts not in request:
            request.append(_apply_timeouts)
        if _note_answer not in response:
            response.insert(0, _note_answer)  # before a hook that may raise on the status
        client.event_hooks = {**hooks, "request": request, "response": response}
    return client


def _wrapping(factory: Callable[[], Any]) -> Callable[[], Any]:
    def with_timeouts() -> Any:
        return _add_hooks(factory())

    setattr(with_timeouts, _WRAPPED, factory)
    return with_timeouts


def install_timeouts() -> None:
    """Make the client's sessions carry our hooks: wrap the factory in use (unless it is already
    ours) and check the live session. Cheap when nothing changed; called by every ``bounded``."""
    from huggingface_hub import get_session, set_client_factory
    from huggingface_hub.utils import _http

    global _wrapped_default
    with _hook_lock:
        in_use = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None)  # private to the client
        if in_use is None:  # a client without it: wrap its default factory, once
            if not _wrapped_default:
                set_client_factory(_wrapping(_http.default_client_factory))
                _wrapped_default = True
        elif not hasattr(in_use, _WRAPPED):
            set_client_factory(_wrapping(in_use))  # also closes the live session; the next one has the hooks
        # A session made some other way (or whose hooks were replaced) gets them in place.
        _add_hooks(get_session())


@contextmanager
def bounded(what: str, *, stops_retries: bool = True) -> Iterator[_Deadline]:
    """Calls to the client inside get the hub timeout on each request, and no retry after the hub
    has been silent that long (``stops_retries=False``: per-request timeouts only, for a transfer
    that runs partly outside the hooks' sight)."""
    seconds = current_timeout_s()  # a bad setting fails first
    deadline = _Deadline(seconds, what, stops_retries=stops_retries)
    install_timeouts()
    previous = getattr(_local, "deadline", None)
    _local.deadline = deadline
    try:
        yield deadline
    finally:
        _local.deadline = previous

"""Why the launcher ended, in one line, in the container's termination message file.

Kubernetes shows that file's content in ``kubectl describe pod`` (Last State: Terminated,
Message) even after the logs are gone, e.g. when a LeaderWorkerSet recreates the group.

Whoever knows a cause says it, once, as it happens; the CLI writes the file on the way out::

    from kaito_runtime import termination
    termination.note_cause("rank 2 was lost: no heartbeat for 15 s", exit_code=22)

``note_cause`` keeps the first cause noted (the root cause; what follows it is a consequence)
unless ``replace=True``. At exit, ``write(exit_code)`` writes ``<cause> (exit N)``: one line,
secrets masked (secrets.redact), at most 4096 bytes (the kubelet's limit), once per process.
With no cause noted it writes the fallback the caller gives, else ``exited (exit N)``.

The file: ``--termination-log PATH`` / ``KAITO_TERMINATION_LOG``; else /dev/termination-log
when it exists and is writable (the kubelet creates it in every container); ``none`` (or an
empty value) turns it off. A file that cannot be written is skipped (logged at debug level).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from kaito_runtime.secrets import redact

__all__ = ["DEFAULT_PATH", "ENV", "MAX_BYTES", "cause", "configure", "ending", "note_cause", "path", "write"]

DEFAULT_PATH = Path("/dev/termination-log")
ENV = "KAITO_TERMINATION_LOG"
MAX_BYTES = 4096  # the kubelet reads at most this much of the file
_OFF = ("", "none", "off")

log = logging.getLogger("kaito_runtime.termination")

_lock = threading.Lock()
_state: dict[str, object] = {"configured": False, "path": None, "cause": None, "code": None, "written": False}


def _default(env: Mapping[str, str]) -> Path | None:
    if ENV in env:
        raw = env[ENV].strip()
        return None if raw.lower() in _OFF else Path(raw).expanduser()
    if DEFAULT_PATH.exists() and os.access(DEFAULT_PATH, os.W_OK):
        return DEFAULT_PATH
    return None


def configure(given: Path | str | None = None, env: Mapping[str, str] | None = None) -> Path | None:
    """Choose the file: ``given`` (the option), else the environment's, else the default.
    Returns it (None: off). Calling it again replaces the choice; a noted cause is kept."""
    env = os.environ if env is None else env
    if given is None:
        chosen = _default(env)
    else:
        text = str(given).strip()
        chosen = None if text.lower() in _OFF else Path(text).expanduser()
    with _lock:
        _state["configured"], _state["path"] = True, chosen
    return chosen


def path() -> Path | None:
    with _lock:
        configured, chosen = _state["configured"], _state["path"]
    return chosen if configured else _default(os.environ)  # type: ignore[return-value]


def note_cause(what: str, *, exit_code: int | None = None, replace: bool = False) -> None:
    """Remember why the launcher is ending (the first cause wins unless ``replace``)."""
    text = " ".join(str(what).split())
    if not text:
        return
    with _lock:
        if _state["cause"] is None or replace:
            _state["cause"], _state["code"] = text, exit_code


def cause() -> str | None:
    with _lock:
        return _state["cause"]  # type: ignore[return-value]


def message(exit_code: int, fallback: str | None = None) -> str:
    """The line ``write`` would write now."""
    with _lock:
        noted = _state["cause"]
    what = noted or (" ".join(fallback.split()) if fallback else None) or "exited"
    line = redact(f"{what} (exit {exit_code})")
    data = line.encode("utf-8")
    if len(data) > MAX_BYTES:
        line = data[: MAX_BYTES - 3].decode("utf-8", errors="ignore") + "..."
    return line


def write(exit_code: int, fallback: str | None = None) -> Path | None:
    """Write the message (once per process; a second call does nothing). Returns the file
    written, or None (off, already written, or not writable)."""
    target = path()
    with _lock:
        if _state["written"] or target is None:
            return None
        _state["written"] = True
    line = message(exit_code, fallback)
    try:
        with open(target, "w", encoding="utf-8") as out:
            out.write(line + "\n")
    except OSError as error:
        log.debug("cannot write the termination message to %s: %s", target, error.strerror or error)
        return None
    return target


def exit_code_of(error: BaseException) -> int:
    """The exit code a SystemExit carries, as the interpreter maps it."""
    code = getattr(error, "code", 1)
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1


@contextmanager
def ending(fallback: str | None = None) -> Iterator[None]:
    """Around a command's body: on the way out (return, sys.exit, an exception) the message is
    written with the exit code the process will have."""
    try:
        yield
    except SystemExit as leaving:
        write(exit_code_of(leaving), fallback)
        raise
    except KeyboardInterrupt:
        write(130, fallback or "interrupted")
        raise
    except BaseException as error:
        write(1, fallback or f"unexpected {type(error).__name__}: {error}")
        raise
    else:
        write(0, fallback)


def _reset_for_tests() -> None:
    with _lock:
        _state.update(configured=False, path=None, cause=None, code=None, written=False)

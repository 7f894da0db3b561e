"""The Hugging Face token: where it comes from, a type that never shows it, and log redaction.

A token must never reach a log line, a plan, an error message or a process argv. ``Secret``
hides its value from ``repr``/``str``/``format``; ``RedactingFilter`` replaces every registered
secret in log records (message, arguments, exception text) with ``***``. ``resolve_token``
registers what it finds, so installing the filter on the root handler covers every logger.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kaito_runtime.errors import InputError

MASK = "***"
TOKEN_FILE_ENV = "KAITO_HF_TOKEN_FILE"
# The group's shared secret and the file that holds it (launch.group.secret reads them); no child
# process (vLLM, the watchdog) inherits either.
GROUP_SECRET_ENV = "KAITO_GROUP_SECRET"
GROUP_SECRET_FILE_ENV = "KAITO_GROUP_SECRET_FILE"
# Keys a Kubernetes Secret mounted as a folder may use for the token.
_TOKEN_KEYS_IN_FOLDER = ("token", "HF_TOKEN", "hf_token")
# Shorter values would redact ordinary words; real tokens are far longer.
_MIN_REDACT_LEN = 6
# A piece of a secret this long is masked on its own: a message may show the secret escaped
# (``\\n``, ``\\x00``), so only the parts between the escapes appear verbatim.
FRAGMENT_LEN = 8
# What a token may hold: Hugging Face tokens are printable ASCII without spaces. Anything else
# (a second line, a NUL, a non-ASCII letter) cannot go into an HTTP header, and the HTTP
# library's error would quote it.
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
# Runs of a form between escapes or unprintable characters: the fragments masked on their own.
_ESCAPE_OR_UNPRINTABLE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.)|%[0-9A-Fa-f]{2}|[^\x21-\x7e]")


class Secret:
    """A string that does not show itself. Call ``reveal()`` where the value is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not picklable (it would leave the process in clear text)")


# --- registry + logging filter ----------------------------------------------------------------

_registry: set[str] = set()
_registry_lock = threading.Lock()


def register_secret(value: str | Secret | None) -> None:
    """Add a value that every ``RedactingFilter`` will mask from now on."""
    if isinstance(value, Secret):
        value = value.reveal()
    if not value or len(value) < _MIN_REDACT_LEN:
        return
    with _registry_lock:
        _registry.update(shown_forms(value))


def shown_forms(value: str) -> set[str]:
    """Every way a message may show ``value``: raw, ``repr``/escaped, as bytes, JSON, URL-encoded,
    and each piece of at least FRAGMENT_LEN characters between escaped or unprintable characters."""
    encoded = value.encode("utf-8", "surrogateescape")
    forms = {
        value,
        repr(value)[1:-1],
        ascii(value)[1:-1],
        repr(encoded)[2:-1],
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        urllib.parse.quote(encoded, safe=""),
        urllib.parse.quote_plus(encoded, safe=""),
        urllib.parse.quote(encoded),
        value.encode("unicode_escape").decode("ascii"),
    }
    pieces = {piece for form in forms for piece in _ESCAPE_OR_UNPRINTABLE.split(form) if len(piece) >= FRAGMENT_LEN}
    return {form for form in forms | pieces if len(form) >= _MIN_REDACT_LEN}


def registered_secrets() -> tuple[str, ...]:
    with _registry_lock:
        # Longest first, so a secret that contains another is masked whole.
        return tuple(sorted(_registry, key=len, reverse=True))


def redact(text: str) -> str:
    for value in registered_secrets():
        if value in text:
            text = text.replace(value, MASK)
    return text


class RedactingFilter(logging.Filter):
    """Masks registered secrets in a record; install it on handlers (it never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = registered_secrets()
        if not secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: mask the raw parts instead
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_redaction(handler: logging.Handler) -> None:
    """Idempotently add a ``RedactingFilter`` to ``handler``."""
    if not any(isinstance(f, RedactingFilter) for f in handler.filters):
        handler.addFilter(RedactingFilter())


# --- token resolution -------------------------------------------------------------------------


def _read_token_file(path: Path, origin: str) -> str:
    target = path
    if path.is_dir():
        found = [path / key for key in _TOKEN_KEYS_IN_FOLDER if (path / key).is_file()]
        if not found:
            raise InputError(
                f"The Hugging Face token folder {path} (from {origin}) holds no token file",
                why=f"looked for {', '.join(_TOKEN_KEYS_IN_FOLDER)} inside it",
                fix="mount the Secret key as one of those names, or point to the file itself",
            )
        target = found[0]
    try:
        value = target.read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(
            f"The Hugging Face token file {target} (from {origin}) is not UTF-8 text",
            why="a token is printable ASCII; the file holds other bytes",
            fix="write the token alone into the file (e.g. printf %s TOKEN > FILE)",
        ) from None
    except FileNotFoundError:
        raise InputError(
            f"The Hugging Face token file {target} (from {origin}) does not exist",
            fix="mount the access Secret at that path, or drop the option to use HF_TOKEN",
        ) from None
    except OSError as e:
        raise InputError(
            f"The Hugging Face token file {target} (from {origin}) cannot be read",
            why=e.strerror or type(e).__name__,
            fix="check the file's permissions and the volume mount",
        ) from None
    if not value:
        raise InputError(
            f"The Hugging Face token file {target} (from {origin}) is empty",
            fix="put the token in the file (one line), or drop the option",
        )
    check_token_text(value, f"the token file {target} (from {origin})")
    return value


def check_token_text(value: str, source: str) -> None:
    """Refuse a token that holds spaces, control or non-ASCII characters (exit 2), naming where it
    came from and never the value: such a token would only fail later inside the HTTP library,
    whose error quotes it."""
    if _TOKEN_CHARS.fullmatch(value):
        return
    register_secret(value)  # in case anything quotes it anyway
    kinds = sorted({
        "a space" if ch == " " else "a control character" if ord(ch) < 0x20 or ord(ch) == 0x7F
        else "a non-ASCII character" if ord(ch) > 0x7E else "an unexpected character"
        for ch in value if not _TOKEN_CHARS.fullmatch(ch)
    })
    raise InputError(
        f"The Hugging Face token from {source} holds {' and '.join(kinds)}",
        why="a token is one word of printable ASCII (surrounding whitespace is ignored); this one cannot be sent",
        fix="write the token alone, on one line (e.g. printf %s TOKEN > FILE, or HF_TOKEN=TOKEN)",
    )


def _stored_login_path(env: Mapping[str, str]) -> Path:
    """Where ``huggingface_hub login`` stores the token, computed from ``env`` (not os.environ)."""
    if env.get("HF_TOKEN_PATH"):
        return Path(env["HF_TOKEN_PATH"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "token"
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or str(Path.home()), ".cache")
    return Path(cache).expanduser() / "huggingface" / "token"


# Names whose values decide the lookup; a cache entry is only reused for the same values.
_TOKEN_ENV = (TOKEN_FILE_ENV, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "XDG_CACHE_HOME", "HOME")
_lookups: dict[tuple[object, ...], tuple[tuple[object, ...] | None, Secret | None, str]] = {}


def _file_state(path: Path | None) -> tuple[object, ...] | None:
    """What identifies the content of the file a token was read from (it may be rotated in place)."""
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return ("missing",)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def resolve_token(env: Mapping[str, str], token_file: Path | None = None) -> tuple[Secret | None, str]:
    """Find the Hugging Face token; returns it (or None) and a description of its source.

    Order: ``token_file`` (the --token-file option), ``$KAITO_HF_TOKEN_FILE``, ``$HF_TOKEN``,
    ``$HUGGING_FACE_HUB_TOKEN``, then huggingface_hub's stored login (``$HF_TOKEN_PATH`` or
    ``$HF_HOME/token``). A token file named by the user must exist and hold a token. The value
    found is registered for log redaction.

    Cheap to call again: the answer is kept per (``token_file``, the variables above) and reused
    while the file it was read from is unchanged, so a second call costs one ``stat``. A
    different environment never gets another environment's answer.
    """
    key = (None if token_file is None else str(token_file), *(env.get(name) for name in _TOKEN_ENV))
    cached = _lookups.get(key)
    if cached is not None:
        state, token, source = cached
        path = _token_path(env, token_file)
        if state == _file_state(path):
            return token, source
    token, source, path = _lookup_token(env, token_file)
    if token is not None:
        register_secret(token)
    _lookups[key] = (_file_state(path), token, source)
    return token, source


@dataclass(frozen=True)
class Credentials:
    """The Hugging Face token of one run, resolved once (``resolve_credentials``), and where it
    was found. The token never shows itself (``Secret``); ``source`` names a place, never a value."""

    token: Secret | None = field(default=None, repr=False)
    source: str = "none"  # "HF_TOKEN", "file /run/secrets/hf", "none", ...

    @property
    def found(self) -> bool:
        return self.token is not None

    @property
    def found_source(self) -> str | None:
        """Where the token came from, or None when there is none (what a plan shows)."""
        return self.source if self.token is not None else None


def resolve_credentials(env: Mapping[str, str], token_file: Path | None = None) -> Credentials:
    """``resolve_token`` as one value."""
    token, source = resolve_token(env, token_file)
    return Credentials(token, source)


def _token_path(env: Mapping[str, str], token_file: Path | None) -> Path | None:
    """The file the lookup reads, if it reads one (None when a variable holds the token)."""
    if token_file is not None:
        return Path(token_file)
    if env.get(TOKEN_FILE_ENV):
        return Path(env[TOKEN_FILE_ENV])
    if env.get("HF_TOKEN", "").strip() or env.get("HUGGING_FACE_HUB_TOKEN", "").strip():
        return None
    return _stored_login_path(env)


def _lookup_token(env: Mapping[str, str], token_file: Path | None) -> tuple[Secret | None, str, Path | None]:
    path = _token_path(env, token_file)
    if token_file is not None:
        return Secret(_read_token_file(Path(token_file), "--token-file")), f"file {token_file}", path
    if env.get(TOKEN_FILE_ENV):
        assert path is not None
        return Secret(_read_token_file(path, TOKEN_FILE_ENV)), f"file {path}", path
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if env.get(name, "").strip():
            value = env[name].strip()
            check_token_text(value, f"the variable {name}")
            return Secret(value), name, None
    assert path is not None
    try:
        text = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    except UnicodeDecodeError:
        raise InputError(
            f"The stored huggingface_hub login {path} is not UTF-8 text",
            fix="log in again (hf auth login), or pass the token with HF_TOKEN / --token-file",
        ) from None
    except OSError:
        text = ""
    if text:
        check_token_text(text, f"the stored huggingface_hub login {path}")
        return Secret(text), f"huggingface_hub login ({path})", path
    return None, "none", path

"""Logging set-up: human lines on a terminal, JSON lines when asked, secrets redacted at the handler."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable

from kaito_runtime.errors import shortened
from kaito_runtime.secrets import install_redaction, redact

__all__ = [
    "JsonLineFormatter", "RedactingStream", "RedactingTextFormatter", "child_line_writer", "final_error", "redact",
    "set_phase", "setup_logging",
]

MAX_LINE_CHARS = 8000  # the final error line, and every warning or error line kaito-run logs
_mode = {"format": "text"}  # the --log-format in force (the final error line follows it)
_phase: dict[str, str | None] = {"name": None}  # the launch's phase (observe.Phase), in every JSON line


def set_phase(name: str | None) -> None:
    """The phase JSON log lines carry from now on (the launch's status calls this as it moves)."""
    _phase["name"] = name


def _with_phase(payload: dict) -> dict:
    if _phase["name"] is not None:
        payload.setdefault("phase", _phase["name"])
    return payload


def _now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class RedactingStream:
    """A text stream in front of sys.stdout / sys.stderr: every line written through it (by us,
    by a library's own handler, by a print) is redacted, whole lines at a time so a secret split
    over two writes is still seen. With ``as_json`` a line that is not already a JSON object is
    written as one ({"logger": NAME, "message": LINE})."""

    def __init__(self, inner, name: str, *, as_json: bool = False) -> None:
        self._inner, self._name, self.as_json = inner, name, as_json
        self._pending = ""

    @property
    def inner(self):
        return self._inner

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending:
            complete, _, self._pending = self._pending.rpartition("\n")
            self._inner.write("".join(self._line(line) + "\n" for line in complete.split("\n")))
        return len(text)

    def _line(self, line: str) -> str:
        line = redact(line)
        if not self.as_json or _is_json_object(line):
            return line
        level = "error" if line.startswith(("Error", "error")) else "info"
        return json.dumps(_with_phase({"time": _now(), "level": level, "logger": self._name, "message": line}),
                          ensure_ascii=False)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, ""
            self._inner.write(self._line(pending) if self.as_json else redact(pending))
        self._inner.flush()

    def __getattr__(self, name: str):
        return getattr(self._inner, name)


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _wrap_streams(as_json: bool) -> None:
    for attr in ("stdout", "stderr"):
        stream = getattr(sys, attr)
        if isinstance(stream, RedactingStream):
            stream = stream.inner
        # stdout carries command output (a dry run's plan, --list-presets): redacted, never rewritten.
        setattr(sys, attr, RedactingStream(stream, attr, as_json=as_json and attr == "stderr"))


def adopt_library_loggers() -> None:
    """Libraries that log through handlers of their own (huggingface_hub adds one at import)
    would write their lines a second time, in their own format and outside our redaction: drop
    those handlers so every record reaches our one root handler."""
    try:
        import huggingface_hub.utils.logging  # noqa: F401 - makes its handler now, so it is dropped now
    except ImportError:  # pragma: no cover - the client is a dependency
        pass
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger) or logger.name.startswith("kaito_runtime"):
            continue
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not getattr(handler, "_kaito", False):
                logger.removeHandler(handler)
        logger.propagate = True


def final_error(message: str, exit_code: int, *, as_json: bool | None = None, **fields: str) -> None:
    """The last line of a failed run: `kaito-run: error: ...` in text mode, one JSON object with
    the exit code (and ``fields``) in JSON mode. Always one line, redacted. ``as_json`` None: the
    --log-format in force; the CLI decides itself for an error found before logging is set up."""
    one_line = shortened(redact(message).replace("\r", "\\r").replace("\n", "\\n"), MAX_LINE_CHARS)
    if _mode["format"] == "json" if as_json is None else as_json:
        extra = {key: redact(value) for key, value in fields.items()}
        line = json.dumps(_with_phase({"time": _now(), "level": "error", "logger": "kaito_runtime.cli", "message": one_line,
                                       "exit_code": exit_code, **extra}), ensure_ascii=False)
    else:
        line = f"kaito-run: error: {one_line}"
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# vLLM's own lines start with their level, after an optional "(EngineCore_DP0 pid=12)" prefix.
_CHILD_LEVEL = re.compile(r"(?:\([^)]*\)\s*)?(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b")


def child_line_writer(source: str = "vllm") -> Callable[[str], None] | None:
    """How the supervisor writes a line of the child's output (given without its newline): in
    JSON mode as one object on stdout ({"source": "vllm", "message": LINE, ...}, redacted, the
    level read from vLLM's own prefix, else info); None in text mode, where lines are copied as
    they are."""
    if _mode["format"] != "json":
        return None

    def write(line: str) -> None:
        shown = redact(line.rsplit("\r", 1)[-1])  # a redrawn progress bar: what a terminal shows last
        level = _CHILD_LEVEL.match(shown)
        sys.stdout.write(json.dumps(_with_phase({"time": _now(), "level": level.group(1).lower() if level else "info",
                                                 "logger": source, "source": source, "message": shown}),
                                    ensure_ascii=False) + "\n")
        sys.stdout.flush()

    return write


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record. Every text field goes through ``redact()`` here as well as
    through the handler's RedactingFilter, so a secret registered after the filter ran, or a
    formatter used without the filter, still never reaches the output."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _bounded(record, redact(record.getMessage())),
        }
        _with_phase(payload)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            payload.update(fields)
        # The filter leaves the redacted traceback in exc_text; formatting exc_info again would
        # bring back the clear text.
        exception = record.exc_text or (self.formatException(record.exc_info) if record.exc_info else None)
        if exception:
            payload["exception"] = redact(exception)
        if record.stack_info:
            payload["stack"] = redact(record.stack_info)
        return json.dumps(payload, ensure_ascii=False)


class RedactingTextFormatter(logging.Formatter):
    """The human format; the whole line is redacted once more after formatting."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _bounded(record, record.message)
        return super().formatMessage(record)


def _bounded(record: logging.LogRecord, message: str) -> str:
    """A warning or error line's message, cut at MAX_LINE_CHARS (it may quote a huge value)."""
    return shortened(message, MAX_LINE_CHARS) if record.levelno >= logging.WARNING else message


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    _mode["format"] = fmt
    _wrap_streams(fmt == "json")
    adopt_library_loggers()
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(RedactingTextFormatter("%(asctime)s %(levelname)-7s kaito-run: %(message)s", "%H:%M:%S"))
    install_redaction(handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_kaito", False):
            root.removeHandler(old)
    handler._kaito = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # Libraries (huggingface_hub, its HTTP client, filelock) log every request at info: keep
    # them at warning unless debugging, and our own loggers at the level asked for.
    root.setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
    logging.getLogger("kaito_runtime").setLevel(level.upper())

"""Logging set-up: human lines on a terminal, JSON lines when asked, secrets redacted at the handler."""

from __future__ import annotations

import json
import logging
import sys
import time

from kaito_runtime.secrets import install_redaction, redact

__all__ = ["JsonLineFormatter", "RedactingTextFormatter", "redact", "setup_logging"]


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
            "message": redact(record.getMessage()),
        }
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


def setup_logging(fmt: str = "text", level: str = "info") -> None:
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

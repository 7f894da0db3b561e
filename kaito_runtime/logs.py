"""Logging set-up: human lines on a terminal, JSON lines when asked, secrets redacted at the handler."""

from __future__ import annotations

import json
import logging
import sys
import time

from kaito_runtime.secrets import install_redaction


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def setup_logging(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s kaito-run: %(message)s", "%H:%M:%S"))
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

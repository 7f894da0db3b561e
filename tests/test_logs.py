"""Log set-up: both formats keep a registered secret out of every part of a line."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from kaito_runtime import logs
from kaito_runtime.secrets import MASK, register_secret

SECRET = "hf_logsTestSecret_0123456789abcdef"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch):
    """Run setup_logging against a private stderr; yields a function (format) -> (logger, stream)."""
    root = logging.getLogger()
    saved_level = root.level
    ours = logging.getLogger("kaito_runtime")
    saved_ours = ours.level
    register_secret(SECRET)

    def make(fmt: str):
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        logs.setup_logging(fmt, "info")
        return logging.getLogger("kaito_runtime.test_logs"), stream

    yield make
    for handler in list(root.handlers):
        if getattr(handler, "_kaito", False):
            root.removeHandler(handler)
    root.setLevel(saved_level)
    ours.setLevel(saved_ours)


def _raise_with_secret() -> None:
    raise RuntimeError(f"the hub said: bad token {SECRET}")


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("where", ["message", "args", "exception"])
def test_a_registered_secret_never_reaches_the_output(captured, fmt, where):
    log, stream = captured(fmt)
    if where == "message":
        log.error(f"token is {SECRET}")
    elif where == "args":
        log.error("token is %s (from %s)", SECRET, "HF_TOKEN")
    else:
        try:
            _raise_with_secret()
        except RuntimeError:
            log.exception("fetching failed")
    out = stream.getvalue()
    assert out, "nothing was logged"
    assert SECRET not in out
    assert MASK in out
    if where == "exception":
        assert "RuntimeError" in out and "_raise_with_secret" in out  # the traceback is still there


def test_json_lines_parse_and_carry_the_redacted_exception(captured):
    log, stream = captured("json")
    try:
        _raise_with_secret()
    except RuntimeError:
        log.exception("fetching %s failed", "org/model")
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["level"] == "error" and line["logger"] == "kaito_runtime.test_logs"
    assert line["message"] == "fetching org/model failed"
    assert "bad token " + MASK in line["exception"]
    assert SECRET not in line["exception"]


def test_json_formatter_redacts_even_without_the_filter():
    register_secret(SECRET)
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "value %s", (SECRET,), None)
    try:
        _raise_with_secret()
    except RuntimeError:
        record.exc_info = sys.exc_info()
    out = logs.JsonLineFormatter().format(record)
    assert SECRET not in out
    assert json.loads(out)["message"] == f"value {MASK}"


def test_library_loggers_stay_at_warning_unless_debugging(captured):
    log, stream = captured("text")
    logging.getLogger("huggingface_hub.some_module").info("GET https://example/api/models")
    log.info("ours at info")
    out = stream.getvalue()
    assert "ours at info" in out
    assert "example/api/models" not in out

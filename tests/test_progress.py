"""kaito_runtime.progress: log lines while the weights download."""

from __future__ import annotations

import logging
import time

import pytest

from kaito_runtime.hub import RemoteFile
from kaito_runtime.progress import ProgressLogger
from kaito_runtime.weights import ensure_weights
from kaito_runtime.weights_store import partial_path
from tests.support.weights_helpers import spec

pytestmark = pytest.mark.usefixtures("hub_env")


def test_progress_lines_in_log_mode(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    hub.rate_limit_bps = 500_000
    ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="log", progress_interval_s=0.1)
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines and all(" / 195.5 KiB" in line for line in lines)


def test_progress_logger_counts_finished_and_partial_files(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="test.progress")
    done, pending = RemoteFile("a.safetensors", 3000, sha256="a" * 64), RemoteFile("b.safetensors", 1000, sha256="b" * 64)
    (tmp_path / "a.safetensors").write_bytes(b"x" * 3000)
    part = partial_path(tmp_path, pending)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"y" * 5000)  # a partial larger than its file counts as the file's size at most
    with ProgressLogger(tmp_path, [done, pending], 0, logging.getLogger("test.progress"), 0.02):
        time.sleep(0.15)
    lines = [r.getMessage() for r in caplog.records]
    assert lines and all(line.startswith("weights: 3.9 KiB / 3.9 KiB (100%)") for line in lines), lines

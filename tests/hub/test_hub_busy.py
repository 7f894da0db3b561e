"""A busy hub (503 / 429) is retried a bounded number of times, honouring Retry-After within the
hub timeout, with one log line per wait; then it fails with exit 16 (issue 10, defect 9)."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slow  # real waits of a second or two

from tests.support.hardening import launcher_env, run_cli


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_hub_that_recovers_is_waited_for(hub, tmp_path, status):
    hub.busy(status, times=2, retry_after="1")
    started = time.monotonic()
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 0, ran.output
    waits = [line for line in ran.stderr.splitlines() if "retrying in" in line]
    assert len(waits) == 2, ran.stderr
    assert str(status) in waits[0] and "Retry-After" in waits[0]
    assert time.monotonic() - started >= 2  # the Retry-After was honoured
    assert sum(1 for r in hub.records if r.status == status) == 2


def test_a_hub_that_stays_busy_fails_with_exit_16_after_bounded_retries(hub, tmp_path):
    hub.busy(503, times=None, retry_after="0")
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 16, ran.output
    busy_answers = sum(1 for r in hub.records if r.status == 503)
    assert 2 <= busy_answers <= 6, busy_answers
    assert "503" in ran.stderr.splitlines()[-1]


def test_a_retry_after_longer_than_the_hub_timeout_is_not_waited_for(hub, tmp_path):
    hub.busy(429, times=None, retry_after="3600")
    started = time.monotonic()
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url, "KAITO_HUB_TIMEOUT": "5"}, home=tmp_path),
    )
    assert ran.code == 16, ran.output
    assert time.monotonic() - started < 5
    assert "3600" in ran.stderr.splitlines()[-1]

"""kaito_runtime.hub_timeouts: a silent or stalled Hub ends in HubUnreachableError, in bounded time."""

from __future__ import annotations

import time

import pytest

from kaito_runtime import hub_timeouts
from kaito_runtime.errors import HubUnreachableError, InputError
from kaito_runtime.hub import fetch_model_metadata
from kaito_runtime.weights import MARKER_NAME, ensure_weights
from tests.support.weights_helpers import silent_endpoint, spec

pytestmark = pytest.mark.usefixtures("hub_env")


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", "0.5")


def test_silent_hub_fails_within_the_timeout(short_timeout, tmp_path):
    with silent_endpoint() as url:
        for call in (
            lambda: ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=url),  # model info
            lambda: ensure_weights(spec(revision="a" * 40), weights_dir=tmp_path, token=None, endpoint=url),  # file list
            lambda: fetch_model_metadata("org/tiny", None, token=None, endpoint=url),
        ):
            t0 = time.monotonic()
            with pytest.raises(HubUnreachableError) as info:
                call()
            elapsed = time.monotonic() - t0
            assert elapsed < 4, elapsed  # the client alone would wait for ever (and retry 5 times)
            assert info.value.exit_code == 16
            assert url in str(info.value) and "KAITO_HUB_TIMEOUT" in str(info.value)


def test_stalled_download_fails_and_the_next_run_finishes(short_timeout, hub, tmp_path):
    hub.stall("org/tiny", "model.safetensors", after_bytes=100_000)
    t0 = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert time.monotonic() - t0 < 6
    assert "model.safetensors" in str(info.value)
    folder = tmp_path / "org--tiny" / hub.commit_of("org/tiny")
    assert not (folder / MARKER_NAME).exists()

    hub.stall("org/tiny", "model.safetensors", after_bytes=10**9)
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert (result.path / MARKER_NAME).exists()


def test_slow_but_steady_download_is_not_a_timeout(short_timeout, hub, tmp_path):
    hub.rate_limit_bps = 150_000  # the 200 kB shard takes ~1.3 s, longer than the 0.5 s timeout
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert result.files == 5 and not result.reused


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_bad_timeout_setting_is_an_input_error(monkeypatch, value):
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", value)
    with pytest.raises(InputError, match="KAITO_HUB_TIMEOUT"):
        hub_timeouts.hub_timeout_s()


def test_timeout_setting(monkeypatch):
    monkeypatch.delenv("KAITO_HUB_TIMEOUT", raising=False)
    assert hub_timeouts.hub_timeout_s() == hub_timeouts.DEFAULT_TIMEOUT_S
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", "2.5")
    assert hub_timeouts.hub_timeout_s() == 2.5

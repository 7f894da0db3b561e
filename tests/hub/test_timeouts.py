"""kaito_runtime.hub.timeouts: a silent or stalled Hub ends in HubUnreachableError, in bounded time;
a slow one that keeps answering does not; the caller's own client factory keeps working."""

from __future__ import annotations

import time

import pytest
from huggingface_hub import get_session, set_client_factory
from huggingface_hub.utils import _http

from kaito_runtime.hub import timeouts as hub_timeouts
from kaito_runtime.errors import HubUnreachableError, InputError
from kaito_runtime.hub import fetch_model_metadata
from tests.support.steps import MARKER_NAME, ensure_weights
from tests.support.weights_helpers import silent_endpoint, spec

pytestmark = pytest.mark.usefixtures("hub_env")


@pytest.fixture
def short_timeout(monkeypatch):
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", "0.5")


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


# --- the silence rule (a slow hub that keeps answering) ---------------------------------------------


@pytest.mark.slow
def test_slow_hub_that_keeps_answering_is_not_a_timeout(short_timeout, hub):
    hub.answer_delay_s = 0.3  # each answer comes within the 0.5 s timeout ...
    hub.tree_page_size = 3  # ... but the file list takes 4 pages, the config a HEAD and a GET
    t0 = time.monotonic()
    remote = fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    assert time.monotonic() - t0 > 1.5  # far longer in total than the timeout
    assert hub.count(kind="tree") >= 4
    assert remote.config is not None and "model.safetensors" in {f.path for f in remote.files}


@pytest.mark.slow
def test_a_download_longer_than_the_timeout_may_still_resume(monkeypatch, hub, tmp_path):
    """Each piece of body received counts as an answer: after a long body the retry is allowed."""
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", "1.8")
    hub.rate_limit_bps = 80_000
    hub.drop_connection("org/tiny", "model.safetensors", after_bytes=190_000)  # after ~2.4 s of body
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert (result.path / MARKER_NAME).exists()
    # the client retried after the drop (from the last chunk it wrote) instead of giving up
    assert hub.count(method="GET", kind="resolve", path_contains="model.safetensors") == 2
    # ... asking only for what it had not written yet (bytes reach the file as they arrive)
    assert hub.range_starts("model.safetensors") and 0 < hub.range_starts("model.safetensors")[-1] <= 190_000


@pytest.mark.slow
def test_a_hub_slower_than_the_timeout_still_fails_fast(short_timeout, hub):
    hub.answer_delay_s = 3.0
    t0 = time.monotonic()
    with pytest.raises(HubUnreachableError) as info:
        fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    assert time.monotonic() - t0 < 2.9
    assert "KAITO_HUB_TIMEOUT" in str(info.value)


# --- the hooks in the client's shared session --------------------------------------------------------


@pytest.fixture
def restore_client_factory():
    """Tests here set the client's process-wide factory; put the previous one back after."""
    saved = getattr(_http, "_GLOBAL_CLIENT_FACTORY")
    yield
    set_client_factory(saved)


def _custom_factory(read_timeouts: list, made: list):
    """A caller's factory, as the client documents it: a header (proxy auth, say) and its own hook."""

    def factory():
        made.append(1)
        client = _http.default_client_factory()
        client.headers["X-Team"] = "kaito-test"
        hooks = client.event_hooks
        record = lambda response: read_timeouts.append(response.request.extensions.get("timeout", {}).get("read"))  # noqa: E731
        client.event_hooks = {**hooks, "response": [*hooks["response"], record]}
        return client

    return factory


def _assert_custom_and_ours(hub, read_timeouts, made):
    assert made, "the caller's factory was not used"
    assert hub.records and all(r.header("X-Team") == "kaito-test" for r in hub.records)
    assert read_timeouts and all(t == 0.5 for t in read_timeouts), read_timeouts


def test_a_custom_client_factory_keeps_its_settings_and_gets_the_timeouts(short_timeout, hub, restore_client_factory):
    read_timeouts, made = [], []
    set_client_factory(_custom_factory(read_timeouts, made))
    fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    _assert_custom_and_ours(hub, read_timeouts, made)


def test_a_factory_set_later_does_not_drop_the_timeouts(short_timeout, hub, restore_client_factory):
    fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    read_timeouts, made = [], []
    set_client_factory(_custom_factory(read_timeouts, made))  # replaces our wrapped factory and the session
    hub.clear_records()
    fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    _assert_custom_and_ours(hub, read_timeouts, made)


def test_the_hooks_are_added_once_and_the_session_is_kept(hub):
    fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    session = get_session()
    for _ in range(3):
        with hub_timeouts.bounded("x"):
            pass
    assert get_session() is session  # no needless close of a session other threads may be using
    assert session.event_hooks["request"].count(hub_timeouts._apply_timeouts) == 1
    assert session.event_hooks["response"].count(hub_timeouts._note_answer) == 1


def test_outside_bounded_the_hooks_change_nothing(hub, monkeypatch):
    """The hooks stay in the process-wide session; requests outside our calls keep their own settings."""
    fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url)
    monkeypatch.setenv("KAITO_HUB_TIMEOUT", "soon")  # inside bounded this is an InputError
    session = get_session()
    response = session.get(f"{hub.url}/api/models/org/tiny")
    assert response.status_code == 200
    assert response.request.extensions["timeout"] == session.timeout.as_dict()

"""kaito_runtime.weights.lock: one downloader per commit; the others wait, within bounds."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from filelock import FileLock

from kaito_runtime.weights import lock as lock_module
from kaito_runtime.errors import InputError, WeightsError
from kaito_runtime.weights import ensure_weights
from kaito_runtime.weights.store import lock_path, repo_folder
from tests.support.weights_helpers import spec

pytestmark = pytest.mark.usefixtures("hub_env")


@pytest.fixture
def quick_log(monkeypatch):
    monkeypatch.setattr(lock_module, "LOCK_LOG_INTERVAL_S", 0.1)


def _held_lock(hub, tmp_path) -> tuple[FileLock, str]:
    commit = hub.commit_of("org/tiny")
    root = repo_folder(tmp_path, "org/tiny")
    root.mkdir(parents=True)
    lock = FileLock(str(lock_path(root, commit)))
    lock.acquire()
    return lock, commit


@pytest.mark.slow
def test_a_stuck_lock_ends_in_an_error_naming_the_lock_file(hub, tmp_path, caplog, quick_log):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    lock, commit = _held_lock(hub, tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightsError) as info:
            ensure_weights(spec(revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url, lock_timeout_s=0.5)
        assert 0.45 < time.monotonic() - t0 < 3
    finally:
        lock.release()
    msg = str(info.value)
    assert info.value.exit_code == 10
    assert str(lock.lock_file) in msg and "KAITO_WEIGHTS_LOCK_TIMEOUT" in msg
    # flock: a held lock has a live holder, so the advice is to look for it, never to delete the file
    assert "holder is alive" in msg and "other launcher sharing this weights volume" in msg
    assert "do not delete the lock file" in msg and f"delete {lock.lock_file}" not in msg
    lines = [r.getMessage() for r in caplog.records]
    assert any("still waiting for" in m and str(lock.lock_file) in m and "another launcher" in m for m in lines)
    assert hub.body_gets() == 0


def test_lock_timeout_from_the_environment(hub, tmp_path, monkeypatch, quick_log):
    monkeypatch.setenv("KAITO_WEIGHTS_LOCK_TIMEOUT", "0.3")
    lock, commit = _held_lock(hub, tmp_path)
    try:
        with pytest.raises(WeightsError, match="did not grow for 0.3s"):
            ensure_weights(spec(revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url)
    finally:
        lock.release()


@pytest.mark.slow
def test_a_holder_that_makes_progress_is_waited_for(hub, tmp_path, quick_log):
    commit = hub.commit_of("org/tiny")
    folder = repo_folder(tmp_path, "org/tiny") / commit
    folder.mkdir(parents=True)
    held = threading.Event()

    def slow_holder() -> None:  # grows its folder every 0.1 s for 1.2 s, then lets go
        with FileLock(str(lock_path(folder.parent, commit))):  # filelock's locks belong to a thread
            held.set()
            for i in range(12):
                (folder / f"chunk{i}").write_bytes(b"x" * 100)
                time.sleep(0.1)

    holder = threading.Thread(target=slow_holder)
    holder.start()
    held.wait(5)
    t0 = time.monotonic()
    result = ensure_weights(spec(revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url, lock_timeout_s=0.5)
    holder.join()
    assert time.monotonic() - t0 > 1.0  # waited past the timeout while the holder made progress
    assert result.files == 5 and not result.reused


@pytest.mark.parametrize("value", ["-1", "later", "inf"])
def test_bad_lock_timeout_setting(monkeypatch, value):
    monkeypatch.setenv("KAITO_WEIGHTS_LOCK_TIMEOUT", value)
    with pytest.raises(InputError, match="KAITO_WEIGHTS_LOCK_TIMEOUT"):
        lock_module.lock_timeout_s()


def test_lock_timeout_default_and_override(monkeypatch):
    monkeypatch.delenv("KAITO_WEIGHTS_LOCK_TIMEOUT", raising=False)
    assert lock_module.lock_timeout_s() == lock_module.DEFAULT_LOCK_TIMEOUT_S
    assert lock_module.lock_timeout_s(12) == 12.0


def test_lock_timeout_is_read_from_the_env_given(monkeypatch):
    monkeypatch.setenv(lock_module.LOCK_TIMEOUT_ENV, "5")
    assert lock_module.lock_timeout_s(None, {lock_module.LOCK_TIMEOUT_ENV: "7"}) == 7.0
    assert lock_module.lock_timeout_s(None, {}) == lock_module.DEFAULT_LOCK_TIMEOUT_S
    assert lock_module.lock_timeout_s() == 5.0

"""kaito_runtime.weights.fetch: resumable, verifying fetch (through ensure_weights and the hub emulator)."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaito_runtime.weights import fetch as downloader
from kaito_runtime.errors import InsufficientDiskError, WeightsCorruptError, WeightsError
from kaito_runtime.weights import MARKER_NAME, ensure_weights
from kaito_runtime.weights.store import partial_path
from tests.support.weights_helpers import remote_file, sha256, spec

pytestmark = pytest.mark.usefixtures("hub_env")

@pytest.mark.slow
def test_dropped_connection_resumes_with_a_range_request(hub, tmp_path):
    hub.drop_connection("org/big", "model.safetensors", after_bytes=11 * 1024 * 1024, times=1)
    result = ensure_weights(spec("org/big"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert any(start > 0 for start in hub.range_starts("model.safetensors"))
    assert sha256(result.path / "model.safetensors") == hub.file_entry("org/big", "model.safetensors").sha256


def test_corrupted_shard_is_refetched_once(hub, tmp_path):
    hub.corrupt("org/tiny", "model.safetensors", times=1)
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert hub.count(method="GET", path_contains="model.safetensors") == 2
    assert sha256(result.path / "model.safetensors") == hub.file_entry("org/tiny", "model.safetensors").sha256


def test_persistently_corrupted_shard_fails_and_leaves_no_marker(hub, tmp_path):
    hub.corrupt("org/tiny", "model.safetensors")
    with pytest.raises(WeightsCorruptError) as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert info.value.exit_code == 18 and "model.safetensors" in str(info.value)
    folder = tmp_path / "org--tiny" / hub.commit_of("org/tiny")
    assert not (folder / MARKER_NAME).exists() and not (folder / "model.safetensors").exists()


RESUME_FILE_BYTES = 3 * 1024 * 1024  # below the client's default 10 MiB buffer: bytes must reach disk as they arrive


@pytest.fixture
def resume_hub(tmp_path_factory):
    """An emulator serving ``org/resume``: a config and one 3 MiB LFS shard."""
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("resume-repos")
    repo = root / "org" / "resume"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (repo / "model.safetensors").write_bytes(__import__("random").Random(7).randbytes(RESUME_FILE_BYTES))
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        yield emulator


@pytest.mark.slow
def test_killed_download_process_resumes_from_its_partial_file(resume_hub, tmp_path):
    hub = resume_hub
    hub.rate_limit_bps = 1024 * 1024  # the 3 MiB shard takes ~3 s; its first chunk lands at once
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]);"
        "from tests.support.weights_helpers import spec; from kaito_runtime.weights import ensure_weights;"
        "ensure_weights(spec('org/resume'), weights_dir=Path(sys.argv[1]), token=None, endpoint=sys.argv[2])"
    )
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), hub.url, str(Path(__file__).parents[2])], env=env)
    folder = tmp_path / "org--resume" / hub.commit_of("org/resume")
    shard = remote_file(hub, "org/resume", "model.safetensors")
    part = partial_path(folder, shard)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 0):
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (folder / MARKER_NAME).exists() and not (folder / "model.safetensors").exists()
    kept = part.stat().st_size
    assert 0 < kept < RESUME_FILE_BYTES  # the killed run's bytes survive it

    hub.rate_limit_bps = None
    hub.clear_records()
    result = ensure_weights(spec("org/resume"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert hub.range_starts("model.safetensors") == [kept]  # only the missing bytes were asked for
    assert hub.count(method="GET", path_contains="model.safetensors") == 1
    assert sha256(result.path / "model.safetensors") == shard.sha256
    assert (folder / MARKER_NAME).exists() and not part.exists()
    assert result.downloaded_bytes <= RESUME_FILE_BYTES - kept + 1024


def test_valid_partial_file_is_resumed_and_counted_as_on_disk(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    folder = tmp_path / "org--tiny" / hub.commit_of("org/tiny")
    shard = remote_file(hub, "org/tiny", "model.safetensors")
    part = partial_path(folder, shard)
    part.parent.mkdir(parents=True)
    part.write_bytes((hub.root / "org" / "tiny" / "model.safetensors").read_bytes()[:150_000])
    hub.rate_limit_bps = 200_000
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="log", progress_interval_s=0.05)
    assert hub.range_starts("model.safetensors") == [150_000]
    assert sha256(result.path / "model.safetensors") == shard.sha256
    messages = [r.getMessage() for r in caplog.records]
    assert any("146.5 KiB already on disk" in m for m in messages)
    progress = [m for m in messages if "ETA" in m]
    assert progress
    for line in progress:  # "weights: 150.2 KiB / 195.5 KiB (77%), ...": never below the partial
        amount, unit = line.split()[1:3]
        assert unit == "KiB" and float(amount) >= 146.5, line


def test_server_ignoring_range_restarts_the_file_cleanly(hub, tmp_path):
    hub.ignore_range = True  # answers the ranged GET with 200 and the whole body
    folder = tmp_path / "org--tiny" / hub.commit_of("org/tiny")
    shard = remote_file(hub, "org/tiny", "model.safetensors")
    part = partial_path(folder, shard)
    part.parent.mkdir(parents=True)
    part.write_bytes((hub.root / "org" / "tiny" / "model.safetensors").read_bytes()[:150_000])
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert hub.range_starts("model.safetensors") == [150_000]
    assert hub.count(method="GET", path_contains="model.safetensors") == 1  # no second fetch: hash matched
    assert sha256(result.path / "model.safetensors") == shard.sha256


@pytest.mark.parametrize(
    ("garbage_bytes", "ranges", "gets"),
    [
        (100_000, [100_000], 2),  # resumed, hash mismatch, refetched from zero
        (200_000, [], 1),  # full size already: no request, hash mismatch, refetched
        (250_000, [], 1),  # larger than the file: discarded before any request
    ],
)
def test_garbage_partial_file_is_detected_and_refetched(hub, tmp_path, caplog, garbage_bytes, ranges, gets):
    caplog.set_level(logging.WARNING, logger="kaito_runtime.weights")
    folder = tmp_path / "org--tiny" / hub.commit_of("org/tiny")
    shard = remote_file(hub, "org/tiny", "model.safetensors")
    part = partial_path(folder, shard)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\x5a" * garbage_bytes)
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert hub.range_starts("model.safetensors") == ranges
    assert hub.count(method="GET", path_contains="model.safetensors") == gets
    assert sha256(result.path / "model.safetensors") == shard.sha256
    assert not part.exists() and (folder / MARKER_NAME).exists()
    assert any("model.safetensors" in r.getMessage() for r in caplog.records)


def test_file_over_the_http_limit_needs_xet(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "MAX_HTTP_DOWNLOAD_SIZE", 100_000)  # the 200 kB shard is "too large"
    with pytest.raises(WeightsError, match="too large for a plain HTTP download") as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert "hf_xet" in str(info.value)
    assert not (tmp_path / "org--tiny" / hub.commit_of("org/tiny") / MARKER_NAME).exists()


def test_disk_full_mid_download_names_the_path_and_keeps_the_partial(hub, tmp_path, monkeypatch):
    real_write = downloader.HashingAppender.write
    written = {"n": 0}

    def write(self, data: bytes) -> int:
        if written["n"] >= 100_000:
            raise OSError(errno.ENOSPC, "No space left on device", str(self._fh.name))
        written["n"] += len(data)
        return real_write(self, data)

    monkeypatch.setattr(downloader.HashingAppender, "write", write)
    with pytest.raises(InsufficientDiskError) as info:
        ensure_weights(spec("org/big"), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    msg = str(info.value)
    assert info.value.exit_code == 17
    assert "filled up" in msg and ".part" in msg and "next run resumes" in msg
    folder = tmp_path / "org--big" / hub.commit_of("org/big")
    assert not (folder / MARKER_NAME).exists()
    kept = partial_path(folder, remote_file(hub, "org/big", "model.safetensors")).stat().st_size
    assert kept > 0

    monkeypatch.setattr(downloader.HashingAppender, "write", real_write)
    hub.clear_records()
    result = ensure_weights(spec("org/big"), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert hub.range_starts("model.safetensors") == [kept]
    assert sha256(result.path / "model.safetensors") == hub.file_entry("org/big", "model.safetensors").sha256


def test_client_size_check_is_told_apart_from_other_os_errors():
    assert downloader._is_size_check_failure(OSError("Consistency check failed: file should be of size 3"))
    assert not downloader._is_size_check_failure(OSError(errno.ENOSPC, "No space left on device"))
    assert not downloader._is_size_check_failure(TimeoutError("no bytes"))


# --- what the progress count sees ------------------------------------------------------------------


def _counted_run(hub, tmp_path, monkeypatch, model):
    """ensure_weights with a recording TransferCount: (count, its final snapshot, the files' total)."""
    from kaito_runtime.weights import progress
    from kaito_runtime import weights

    made = []

    class Recording(progress.TransferCount):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(weights, "TransferCount", Recording)
    result = ensure_weights(model, weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    (count,) = made
    return count, result


def test_count_ends_at_the_total_after_a_corrupt_copy_is_discarded_and_fetched_again(hub, tmp_path, monkeypatch):
    hub.corrupt("org/tiny", "model.safetensors", times=1)
    count, result = _counted_run(hub, tmp_path, monkeypatch, spec())
    held, received, _ = count.snapshot()
    assert held < received  # the discarded bytes were received but are no longer held
    assert "model.safetensors" in count._held
    assert held == sum((result.path / p).stat().st_size for p in count._held)  # exactly what is on disk


def test_count_starts_at_a_resumed_partial_and_ends_at_the_file_size(hub, tmp_path, monkeypatch):
    folder = tmp_path / "org--big" / hub.commit_of("org/big")
    shard = remote_file(hub, "org/big", "model.safetensors")
    part = partial_path(folder, shard)
    part.parent.mkdir(parents=True)
    part.write_bytes((hub.root / "org" / "big" / "model.safetensors").read_bytes()[:5_000_000])
    count, result = _counted_run(hub, tmp_path, monkeypatch, spec("org/big"))
    held, received, _ = count.snapshot()
    assert count._held["model.safetensors"] == shard.size
    assert received == held - 5_000_000  # only the missing bytes were counted as received


def test_silent_tqdm_forwards_each_update_and_a_resumed_start():
    seen: list[int] = []
    bar = downloader._silent_tqdm(seen.append)(total=100, initial=30)
    bar.update(50)
    bar.update(20)
    bar.close()
    assert seen == [30, 50, 20]
    quiet = downloader._silent_tqdm()(total=10)
    quiet.update(10)  # no callback: nothing to forward, nothing shown
    quiet.close()

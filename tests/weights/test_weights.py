"""kaito_runtime.weights: ensure_weights against the real huggingface_hub client and the hub emulator."""

from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from kaito_runtime import weights
from tests.support.steps import remote_metadata, weights_bytes
from kaito_runtime.errors import (
    GatedAccessDeniedError,
    GatedRepoNoTokenError,
    HubUnreachableError,
    InputError,
    InsufficientDiskError,
    RepoNotFoundError,
    RevisionNotFoundError,
    TokenRejectedError,
    WeightsCorruptError,
    WeightsError,
)
from kaito_runtime.secrets import Secret, resolve_token
from kaito_runtime.types import WeightsSource
from kaito_runtime.weights import MARKER_NAME, ensure_weights
from tests.conftest import BAD_TOKEN, GRANTED_TOKEN, UNGRANTED_TOKEN
from tests.support.weights_helpers import closed_port_url, no_writes_under, sha256, spec

pytestmark = pytest.mark.usefixtures("hub_env")


# --- download, reuse, pinning -----------------------------------------------------------------


def test_cold_download_then_warm_start_sends_no_body_request(hub, tmp_path):
    cold = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    commit = hub.commit_of("org/tiny")
    assert cold.path == tmp_path / "org--tiny" / commit and not cold.reused
    assert sorted(p.name for p in cold.path.iterdir() if not p.name.startswith(".")) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"
    ]
    assert sha256(cold.path / "model.safetensors") == hub.file_entry("org/tiny", "model.safetensors").sha256
    marker = json.loads((cold.path / MARKER_NAME).read_text())
    assert marker["revision"] == commit and len(marker["files"]) == cold.files == 5

    hub.clear_records()
    t0 = time.monotonic()
    warm = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert time.monotonic() - t0 < 1.0
    assert warm.reused and warm.downloaded_bytes == 0 and warm.path == cold.path
    assert hub.body_gets() == 0 and hub.count(method="HEAD") == 0

    hub.clear_records()
    pinned = ensure_weights(spec(revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert pinned.reused and hub.records == []  # a pinned commit needs no network at all when warm


def test_pinned_commit_skips_branch_resolution(hub, tmp_path):
    commit = hub.commit_of("org/sharded")
    result = ensure_weights(spec("org/sharded", revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert result.revision == commit
    assert hub.count(kind="model_info") == 0
    assert not (result.path / "consolidated.safetensors").exists()
    assert (result.path / "model-00002-of-00002.safetensors").exists()


def test_mistral_format_downloads_consolidated_only(hub, tmp_path):
    result = ensure_weights(spec("org/sharded", load_format="mistral"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    names = {p.name for p in result.path.iterdir()}
    assert {"consolidated.safetensors", "params.json", "tekken.json"} <= names
    assert "model-00001-of-00002.safetensors" not in names
    assert hub.count(method="GET", path_contains="model-0000") == 0


# --- tokens and errors ------------------------------------------------------------------------


def test_gated_repo_with_token_from_env(hub, tmp_path):
    token, source = resolve_token({"HF_TOKEN": GRANTED_TOKEN}, None)
    result = ensure_weights(spec("org/gated"), weights_dir=tmp_path, token=token, token_source=source, endpoint=hub.url)
    assert (result.path / "model.safetensors").stat().st_size == 60_000


def test_gated_repo_with_token_from_file(hub, tmp_path):
    token_file = tmp_path / "secret" / "token"
    token_file.parent.mkdir()
    token_file.write_text(GRANTED_TOKEN + "\n")
    token, source = resolve_token({"KAITO_HF_TOKEN_FILE": str(token_file)}, None)
    assert source == f"file {token_file}"
    result = ensure_weights(spec("org/gated"), weights_dir=tmp_path / "w", token=token, token_source=source, endpoint=hub.url)
    assert result.files == 2


def test_gated_repo_without_token(hub, tmp_path):
    with pytest.raises(GatedRepoNoTokenError) as info:
        ensure_weights(spec("org/gated"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    msg = str(info.value)
    assert info.value.exit_code == 11
    assert "org/gated" in msg and "HF_TOKEN" in msg and "--token-file" in msg
    assert hub.body_gets() == 0


def test_gated_repo_with_rejected_token(hub, tmp_path):
    token, source = resolve_token({"HF_TOKEN": BAD_TOKEN}, None)
    with pytest.raises(TokenRejectedError) as info:
        ensure_weights(spec("org/gated"), weights_dir=tmp_path, token=token, token_source=source, endpoint=hub.url)
    assert info.value.exit_code == 12
    assert "HF_TOKEN" in str(info.value) and BAD_TOKEN not in str(info.value)


def test_gated_repo_with_token_lacking_access(hub, tmp_path):
    with pytest.raises(GatedAccessDeniedError) as info:
        ensure_weights(spec("org/gated"), weights_dir=tmp_path, token=Secret(UNGRANTED_TOKEN), token_source="HF_TOKEN", endpoint=hub.url)
    assert info.value.exit_code == 13
    assert f"request access at {hub.url}/org/gated" in str(info.value)  # the hub in use, a mirror too
    assert "huggingface.co" not in str(info.value)


def test_token_appears_in_no_log_record_result_or_error(hub, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # root: includes huggingface_hub, httpx2, filelock
    errors: list[str] = []
    for value in (GRANTED_TOKEN, BAD_TOKEN, UNGRANTED_TOKEN):
        try:
            result = ensure_weights(spec("org/gated"), weights_dir=tmp_path, token=Secret(value), token_source="HF_TOKEN", endpoint=hub.url, progress="log", progress_interval_s=0.01)
            errors.append(repr(result))
        except Exception as e:  # noqa: BLE001 - collecting every message
            errors.append(f"{e!r} {e}")
    assert len(caplog.records) > 3
    text = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(errors)
    for value in (GRANTED_TOKEN, BAD_TOKEN, UNGRANTED_TOKEN):
        assert value not in text


def test_repo_and_revision_not_found(hub, tmp_path):
    with pytest.raises(RepoNotFoundError) as info:
        ensure_weights(spec("org/nope"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert info.value.exit_code == 14 and "org/nope" in str(info.value)
    with pytest.raises(RevisionNotFoundError) as info2:
        ensure_weights(spec(revision="no-such-branch"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert info2.value.exit_code == 15 and "no-such-branch" in str(info2.value)
    with pytest.raises(RevisionNotFoundError):
        ensure_weights(spec(revision="0" * 40), weights_dir=tmp_path, token=None, endpoint=hub.url)


def test_unreachable_hub_without_and_with_a_complete_copy(hub, tmp_path):
    dead = closed_port_url()
    with pytest.raises(HubUnreachableError) as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=dead)
    assert info.value.exit_code == 16 and dead in str(info.value) and "--offline" in str(info.value)

    ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    again = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=dead)  # branch: falls back to the ref
    assert again.reused and again.revision == hub.commit_of("org/tiny")


def test_disk_check_happens_before_any_download(hub, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "disk_free_bytes", lambda path: 150_000)
    with pytest.raises(InsufficientDiskError) as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, disk_margin_bytes=0)
    assert info.value.exit_code == 17
    assert "needs 195.5 KiB more" in str(info.value) and "146.5 KiB free" in str(info.value)
    assert hub.body_gets() == 0


# --- offline, local folder, concurrency -------------------------------------------------------


def test_offline_uses_a_complete_copy_without_network(hub, tmp_path, monkeypatch):
    ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    hub.clear_records()
    assert ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, offline=True).reused
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url).reused
    assert hub.records == []
    with pytest.raises(HubUnreachableError) as info:
        ensure_weights(spec("org/sharded"), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert "Offline" in str(info.value)
    assert hub.records == []


def test_local_folder_is_used_as_is(tmp_path):
    good = tmp_path / "model"
    good.mkdir()
    (good / "config.json").write_text("{}")
    (good / "model.safetensors").write_bytes(b"x")
    result = ensure_weights(spec(None, local_path=str(good)), weights_dir=tmp_path / "w", token=None)
    assert result.path == good and result.reused and result.downloaded_bytes == 0
    (good / "model.safetensors").unlink()
    with pytest.raises(InputError, match="no weight files"):
        ensure_weights(spec(None, local_path=str(good)), weights_dir=tmp_path / "w", token=None)
    with pytest.raises(InputError, match="does not exist"):
        ensure_weights(spec(None, local_path=str(tmp_path / "missing")), weights_dir=tmp_path / "w", token=None)


@pytest.mark.slow
def test_concurrent_launchers_download_once(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    hub.rate_limit_bps = 400_000  # the 200 kB shard takes ~0.5 s: the second launcher must wait
    commit = hub.commit_of("org/tiny")
    results: list[object] = []

    def launch() -> None:
        results.append(ensure_weights(spec(revision=commit), weights_dir=tmp_path, token=None, endpoint=hub.url))

    threads = [threading.Thread(target=launch) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(30)
    assert len(results) == 2 and {r.path for r in results} == {tmp_path / "org--tiny" / commit}
    assert sorted(r.reused for r in results) == [False, True]
    assert hub.count(method="GET", path_contains="model.safetensors") == 1
    assert any("waiting for it" in r.getMessage() for r in caplog.records)


def test_planned_path_and_offline_metadata_from_a_complete_copy(hub, tmp_path):
    commit = hub.commit_of("org/tiny")
    assert weights.planned_path(spec(revision=commit), tmp_path) == tmp_path / "org--tiny" / commit
    store = WeightsSource(name="tiny", store_uri="az://acct/models/tiny")  # vLLM streams it: the URI, as vLLM takes it
    assert weights.planned_path(store, tmp_path, {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}) == "az://models/tiny"
    assert weights.planned_path(WeightsSource(name="tiny", local_path=str(tmp_path)), tmp_path / "w") == tmp_path
    with pytest.raises(InputError, match="neither"):
        weights.planned_path(WeightsSource(name="tiny"), tmp_path)
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert weights.planned_path(spec(), tmp_path) == result.path  # branch: the commit it resolved to

    copy = weights.LocalCopies(tmp_path)
    online = remote_metadata("org/tiny", revision=None, token=None, endpoint=hub.url, offline=False, local_copies=copy)
    assert online.revision == commit and weights_bytes(online.files) == 200_000  # bin and original/ not counted
    hub.clear_records()
    offline = remote_metadata("org/tiny", revision=None, token=None, endpoint=hub.url, offline=True, local_copies=copy)
    assert offline.revision == commit and offline.config == online.config and weights_bytes(offline.files) == 200_000
    unreachable = remote_metadata("org/tiny", revision=None, token=None, endpoint=closed_port_url(), offline=False, local_copies=copy)
    assert unreachable.revision == commit
    assert hub.records == []
    with pytest.raises(HubUnreachableError):
        remote_metadata("org/sharded", revision=None, token=None, endpoint=hub.url, offline=True, local_copies=copy)


# --- verify: re-hash a complete copy ----------------------------------------------------------


def _flip_byte_in_place(path: Path, offset: int) -> None:
    """Corrupt one byte without changing the size or rewriting the file."""
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0xFF]))


def test_warm_start_is_size_only_and_verify_repairs_same_size_corruption(hub, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="kaito_runtime.weights")
    first = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    shard, config = first.path / "model.safetensors", first.path / "config.json"
    good_config = config.read_bytes()
    _flip_byte_in_place(shard, 100_000)  # an LFS file: sha256
    _flip_byte_in_place(config, 5)  # a small file: git blob sha1

    hub.clear_records()
    warm = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert warm.reused and hub.body_gets() == 0  # documented: a warm start checks sizes only
    assert sha256(shard) != hub.file_entry("org/tiny", "model.safetensors").sha256

    fixed = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none", verify=True)
    assert not fixed.reused and fixed.path == first.path
    assert sha256(shard) == hub.file_entry("org/tiny", "model.safetensors").sha256
    assert config.read_bytes() == good_config
    # Only the two bad files were fetched again.
    assert hub.body_gets() == 2
    assert hub.count(method="GET", path_contains="model.safetensors") == 1
    assert hub.count(method="GET", path_contains="config.json") == 1
    assert any("fail verification" in r.getMessage() and "config.json" in r.getMessage() for r in caplog.records)

    hub.clear_records()
    again = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none", verify=True)
    assert again.reused and hub.body_gets() == 0


def test_verify_rehashes_files_left_in_place_by_a_run_killed_before_its_marker(hub, tmp_path):
    first = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    (first.path / MARKER_NAME).unlink()
    _flip_byte_in_place(first.path / "model.safetensors", 7)
    hub.clear_records()
    ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none", verify=True)
    assert hub.count(method="GET", path_contains="model.safetensors") == 1
    assert hub.count(method="GET", path_contains="tokenizer.json") == 0  # good files stay
    assert sha256(first.path / "model.safetensors") == hub.file_entry("org/tiny", "model.safetensors").sha256


def test_verify_offline_reports_a_bad_copy_it_cannot_repair(hub, tmp_path):
    first = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="none")
    assert ensure_weights(spec(), weights_dir=tmp_path, token=None, offline=True, verify=True).reused
    _flip_byte_in_place(first.path / "model.safetensors", 0)
    with pytest.raises(WeightsCorruptError) as info:
        ensure_weights(spec(), weights_dir=tmp_path, token=None, offline=True, verify=True)
    assert info.value.exit_code == 18 and "model.safetensors" in str(info.value) and "online" in str(info.value)
    assert (first.path / MARKER_NAME).exists()  # nothing removed: the copy stays usable as it was


# --- file-system failures: one line naming the path and the fix --------------------------------


def test_weights_dir_below_a_file(hub, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(WeightsError) as info:
        ensure_weights(spec(), weights_dir=blocker / "sub", token=None, endpoint=hub.url, progress="none")
    msg = str(info.value)
    assert type(info.value) is WeightsError and info.value.exit_code == 10
    assert str(blocker) in msg and "is a file" in msg and "--weights-dir" in msg and "KAITO_WEIGHTS_DIR" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_weights_dir(hub, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(WeightsError) as info:
            ensure_weights(spec(), weights_dir=locked, token=None, endpoint=hub.url, progress="none")
    finally:
        locked.chmod(0o755)
    msg = str(info.value)
    assert "Permission denied" in msg and str(locked) in msg and "--weights-dir" in msg


@pytest.mark.parametrize(
    ("code", "error", "words"),
    [
        (errno.EROFS, WeightsError, ("read-only volume", "--offline", "--weights-dir")),
        (errno.EACCES, WeightsError, ("Permission denied", "uid", "fsGroup")),
        (errno.ENOSPC, InsufficientDiskError, ("filled up", "resumes")),
        (errno.ENOTDIR, WeightsError, ("is a file", "--weights-dir")),
        (errno.EIO, WeightsError, ("Cannot use the weights folder", "Input/output error")),
    ],
)
def test_os_errors_become_weights_errors(hub, tmp_path, monkeypatch, code, error, words):
    target = tmp_path / "w" / "org--tiny"

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(target))

    monkeypatch.setattr(weights, "held_on_disk", fail)  # any file-system call inside the step
    with pytest.raises(WeightsError) as info:
        ensure_weights(spec(), weights_dir=tmp_path / "w", token=None, endpoint=hub.url, progress="none")
    assert type(info.value) is error
    msg = str(info.value)
    assert str(target) in msg
    for word in words:
        assert word in msg, (word, msg)


def test_read_only_volume_with_a_complete_copy_still_serves_it(hub, tmp_path, caplog):
    wdir = tmp_path / "w"
    ensure_weights(spec(), weights_dir=wdir, token=None, endpoint=hub.url, progress="none")
    caplog.set_level(logging.WARNING, logger="kaito_runtime.weights")
    with no_writes_under(wdir) as attempts:  # every write under wdir fails, even as root
        assert ensure_weights(spec(), weights_dir=wdir, token=None, endpoint=hub.url, progress="none").reused
        meta = weights.local_metadata("org/tiny", None, wdir)
        assert ensure_weights(spec(), weights_dir=wdir, token=None, endpoint=hub.url, offline=True).reused
    assert meta is not None and meta.revision == hub.commit_of("org/tiny")
    # The only write tried is the branch's ref (a nicety for --offline), and its failure is a warning.
    assert all(path.startswith(str(wdir / "org--tiny" / "refs")) for path in attempts), attempts


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (errno.EROFS, ("read-only volume", "--offline", "--weights-dir")),
        (errno.EACCES, ("Permission denied", "uid", "fsGroup")),
    ],
)
def test_a_download_into_a_volume_that_refuses_writes_is_one_weights_error(hub, tmp_path, code, words):
    """No mock of the step itself: the real ensure_weights meets the failing write primitives."""
    wdir = tmp_path / "w"
    wdir.mkdir()
    with no_writes_under(wdir, code) as attempts, pytest.raises(WeightsError) as info:
        ensure_weights(spec(), weights_dir=wdir, token=None, endpoint=hub.url, progress="none")
    assert attempts
    assert type(info.value) is WeightsError and info.value.exit_code == 10
    msg = str(info.value)
    assert str(wdir) in msg
    for word in words:
        assert word in msg, (word, msg)
    assert hub.body_gets() == 0


def test_an_explicit_offline_argument_wins_over_the_process_environment(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # The API passes offline from the env it was given: False means online, whatever os.environ says.
    assert not ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, offline=False, progress="none").reused
    hub.clear_records()
    assert ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, offline=True, progress="none").reused
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert hub.records == []


def test_importing_the_weights_step_loads_no_client():
    """Client imports stay lazy: start-up stays fast, and any client version imports cleanly."""
    import subprocess
    import sys

    code = (
        "import sys, kaito_runtime.weights, kaito_runtime.hub; "
        "print(sorted(m for m in ('huggingface_hub', 'filelock', 'httpx', 'httpx2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_progress_bar_is_closed_when_the_fetcher_cannot_even_start(hub, tmp_path, monkeypatch):
    """A failure between opening the bar and the transfer must not leave a bar drawn on stderr."""
    from kaito_runtime.weights import progress

    closed = []

    class RecordingBar(progress.ProgressBar):
        def __exit__(self, *exc):
            closed.append(True)
            return super().__exit__(*exc)

    def broken_fetcher(*args, **kwargs):
        raise OSError(errno.EIO, "cannot start")

    monkeypatch.setattr(weights, "ProgressBar", RecordingBar)
    monkeypatch.setattr(weights, "Fetcher", broken_fetcher)
    with pytest.raises(WeightsError):
        ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="bar")
    assert closed == [True]


def test_a_weights_result_never_shows_the_secret_part_of_vllms_environment(tmp_path):
    result = weights.WeightsResult(tmp_path, 0, False, 0.0, 1, "v1", vllm_env={"AZURE_STORAGE_ACCOUNT_NAME": "acct"},
                                   vllm_secret_env={"AZURE_STORAGE_SAS_TOKEN": "sv=1&sig=SecretSas0123"})
    assert "SecretSas0123" not in repr(result) and "acct" in repr(result)

"""kaito_runtime.weights against the real huggingface_hub client and the hub emulator."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kaito_runtime import weights
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
from kaito_runtime.hub import RemoteFile, fetch_model_metadata
from kaito_runtime.secrets import Secret, resolve_token
from kaito_runtime.values import AttentionGeometry, ModelSpec
from kaito_runtime.weights import MARKER_NAME, ensure_weights, select_files
from tests.conftest import BAD_TOKEN, BIG_FILE_BYTES, GRANTED_TOKEN, UNGRANTED_TOKEN

pytestmark = pytest.mark.usefixtures("hub_env")


def spec(repo_id: str | None = "org/tiny", *, revision: str | None = None, load_format: str = "hf", local_path: str | None = None) -> ModelSpec:
    return ModelSpec(
        name="test-model",
        architecture="LlamaForCausalLM",
        weights_bytes=1,
        max_context=256,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=2, num_kv_heads=2, head_dim=8),
        repo_id=repo_id,
        revision=revision,
        load_format=load_format,  # type: ignore[arg-type]
        local_path=local_path,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- selection (pure) -------------------------------------------------------------------------

REPO_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "chat_template.jinja", "preprocessor_config.json", "README.md", ".gitattributes",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
    "consolidated.safetensors", "params.json", "tekken.json",
    "original/consolidated.00.pth", "original/model.safetensors", "metal/model.bin",
]


def test_select_hf_format_takes_top_level_hf_shards_only():
    got = select_files(REPO_FILES, "hf")
    assert "model-00001-of-00002.safetensors" in got and "model.safetensors.index.json" in got
    assert "chat_template.jinja" in got and "tokenizer.model" in got and "preprocessor_config.json" in got
    for skipped in ("consolidated.safetensors", "pytorch_model-00001-of-00002.bin", "original/model.safetensors",
                    "metal/model.bin", "README.md", "params.json", "tekken.json"):
        assert skipped not in got


def test_select_mistral_format_takes_consolidated_and_not_hf_shards():
    got = select_files(REPO_FILES, "mistral")
    assert {"consolidated.safetensors", "params.json", "tekken.json", "tokenizer.json"} <= set(got)
    assert not any(p.startswith("model-") or p == "model.safetensors.index.json" for p in got)


def test_select_falls_back_to_bin_only_without_safetensors():
    files = ["config.json", "pytorch_model.bin", "original/model.safetensors"]
    assert select_files(files, "hf") == ["config.json", "pytorch_model.bin"]


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


def test_fetch_model_metadata(hub):
    remote = fetch_model_metadata("org/gated", None, token=Secret(GRANTED_TOKEN), endpoint=hub.url)
    assert remote.revision == hub.commit_of("org/gated") and remote.gated is True
    assert remote.config["architectures"] == ["LlamaForCausalLM"]
    assert ("model.safetensors", 60_000) in remote.file_sizes
    with pytest.raises(GatedRepoNoTokenError):  # config.json of a gated repo needs the token too
        fetch_model_metadata("org/gated", None, token=None, endpoint=hub.url)

    tiny = fetch_model_metadata("org/tiny", "main", token=None, endpoint=hub.url)
    assert tiny.gated is False and tiny.config["num_hidden_layers"] == 2
    assert ("original/model.safetensors", 30_000) in tiny.file_sizes


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
    assert "request access at https://huggingface.co/org/gated" in str(info.value)


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


# --- resume, corruption, kill -----------------------------------------------------------------


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


def test_verify_option_rehashes_and_repairs_a_tampered_copy(hub, tmp_path):
    first = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    shard = first.path / "model.safetensors"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url).reused  # size-only by default
    fixed = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, verify=True)
    assert not fixed.reused
    assert sha256(shard) == hub.file_entry("org/tiny", "model.safetensors").sha256


RESUME_FILE_BYTES = 24 * 1024 * 1024  # the client writes to disk every 10 MiB: partials of 10 and 20 MiB


@pytest.fixture
def resume_hub(tmp_path_factory):
    """An emulator serving ``org/resume``: a config and one 24 MiB LFS shard."""
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("resume-repos")
    repo = root / "org" / "resume"
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (repo / "model.safetensors").write_bytes(__import__("random").Random(7).randbytes(RESUME_FILE_BYTES))
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        yield emulator


def remote_file(hub, repo_id: str, path: str) -> RemoteFile:
    e = hub.file_entry(repo_id, path)
    return RemoteFile(e.path, e.size, e.blob_sha1, e.sha256)


def test_killed_download_process_resumes_from_its_partial_file(resume_hub, tmp_path):
    hub = resume_hub
    hub.rate_limit_bps = 8 * 1024 * 1024  # the 24 MiB shard takes ~3 s; its first 10 MiB land at ~1.3 s
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]);"
        "from tests.test_weights import spec; from kaito_runtime.weights import ensure_weights;"
        "ensure_weights(spec('org/resume'), weights_dir=Path(sys.argv[1]), token=None, endpoint=sys.argv[2])"
    )
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), hub.url, str(Path(__file__).parent.parent)], env=env)
    folder = tmp_path / "org--resume" / hub.commit_of("org/resume")
    shard = remote_file(hub, "org/resume", "model.safetensors")
    part = weights.partial_path(folder, shard)
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
    part = weights.partial_path(folder, shard)
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
    part = weights.partial_path(folder, shard)
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
    part = weights.partial_path(folder, shard)
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


# --- offline, local folder, concurrency, progress ---------------------------------------------


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


def test_progress_lines_in_log_mode(hub, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime.weights")
    hub.rate_limit_bps = 500_000
    ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url, progress="log", progress_interval_s=0.1)
    lines = [r.getMessage() for r in caplog.records if "ETA" in r.getMessage()]
    assert lines and all(" / 195.5 KiB" in line for line in lines)


def test_planned_path_and_offline_metadata_from_a_complete_copy(hub, tmp_path):
    commit = hub.commit_of("org/tiny")
    assert weights.planned_path(spec(revision=commit), tmp_path) == tmp_path / "org--tiny" / commit
    result = ensure_weights(spec(), weights_dir=tmp_path, token=None, endpoint=hub.url)
    assert weights.planned_path(spec(), tmp_path) == result.path  # branch: the commit it resolved to

    online = weights.fetch_model_metadata("org/tiny", None, token=None, endpoint=hub.url, weights_dir=tmp_path)
    assert online.commit == commit and online.weights_bytes == 200_000  # bin and original/ not counted
    hub.clear_records()
    offline = weights.fetch_model_metadata("org/tiny", None, token=None, offline=True, weights_dir=tmp_path)
    assert offline.commit == commit and offline.config == online.config and offline.weights_bytes == 200_000
    unreachable = weights.fetch_model_metadata("org/tiny", None, token=None, endpoint=closed_port_url(), weights_dir=tmp_path)
    assert unreachable.commit == commit
    assert hub.records == []
    with pytest.raises(HubUnreachableError):
        weights.fetch_model_metadata("org/sharded", None, token=None, offline=True, weights_dir=tmp_path)

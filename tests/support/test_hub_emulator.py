"""The hub emulator answers the real huggingface_hub client per the contract in hf-hub.md."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile, RepoFolder

from tests.conftest import BAD_TOKEN, GRANTED_TOKEN, UNGRANTED_TOKEN


def test_model_info_with_blobs_and_tree(hub):
    api = HfApi(endpoint=hub.url, token=False)
    info = api.model_info("org/tiny", files_metadata=True)
    assert info.sha == hub.commit_of("org/tiny") and len(info.sha) == 40 and not info.gated
    sib = {s.rfilename: s for s in info.siblings}
    assert sib["model.safetensors"].size == 200_000 and sib["model.safetensors"].lfs.sha256
    assert api.model_info("org/gated").gated == "manual"

    top = list(api.list_repo_tree("org/tiny", revision=info.sha))
    assert {e.path for e in top if isinstance(e, RepoFolder)} == {"original"}
    assert "original/model.safetensors" not in {e.path for e in top}
    deep = {e.path: e for e in api.list_repo_tree("org/tiny", recursive=True, revision=info.sha) if isinstance(e, RepoFile)}
    data = (hub.root / "org/tiny/model.safetensors").read_bytes()
    assert deep["model.safetensors"].lfs.sha256 == hashlib.sha256(data).hexdigest()
    assert deep["config.json"].lfs is None and "original/model.safetensors" in deep


def test_head_headers_etag_and_commit(hub):
    commit = hub.commit_of("org/tiny")
    meta = get_hf_file_metadata(hf_hub_url("org/tiny", "model.safetensors", revision="main", endpoint=hub.url), token=False)
    assert meta.commit_hash == commit and meta.size == 200_000
    assert meta.etag == hub.file_entry("org/tiny", "model.safetensors").sha256
    cfg = (hub.root / "org/tiny/config.json").read_bytes()
    small = get_hf_file_metadata(hf_hub_url("org/tiny", "config.json", revision=commit, endpoint=hub.url), token=False)
    assert small.etag == hashlib.sha1(b"blob %d\0" % len(cfg) + cfg).hexdigest()


def test_range_request_answers_206(hub):
    req = urllib.request.Request(f"{hub.url}/org/tiny/resolve/main/model.safetensors", headers={"Range": "bytes=10-19"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == "bytes 10-19/200000"
        body = resp.read()
    assert body == (hub.root / "org/tiny/model.safetensors").read_bytes()[10:20]
    assert hub.range_starts() == [10]


def test_errors_map_to_the_clients_classes(hub):
    def head(repo: str, path: str = "config.json", rev: str = "main", token: str | bool = False) -> None:
        get_hf_file_metadata(hf_hub_url(repo, path, revision=rev, endpoint=hub.url), token=token)

    with pytest.raises(RepositoryNotFoundError):
        head("org/missing")
    with pytest.raises(RevisionNotFoundError):
        head("org/tiny", rev="nope")
    with pytest.raises(RemoteEntryNotFoundError):
        head("org/tiny", path="nope.json")
    with pytest.raises(GatedRepoError) as no_token:
        head("org/gated")
    assert no_token.value.response.status_code == 401
    with pytest.raises(GatedRepoError) as no_grant:
        head("org/gated", token=UNGRANTED_TOKEN)
    assert no_grant.value.response.status_code == 403
    with pytest.raises(HfHubHTTPError) as bad:
        head("org/tiny", token=BAD_TOKEN)
    assert bad.value.response.status_code == 401 and not isinstance(bad.value, RepositoryNotFoundError)
    head("org/gated", token=GRANTED_TOKEN)


def test_corruption_keeps_length_and_differs(hub):
    hub.corrupt("org/tiny", "model.safetensors", times=1)
    url = f"{hub.url}/org/tiny/resolve/main/model.safetensors"
    bad = urllib.request.urlopen(url).read()
    good = urllib.request.urlopen(url).read()
    assert len(bad) == len(good) == 200_000 and bad != good
    assert good == (hub.root / "org/tiny/model.safetensors").read_bytes()
    assert hub.body_gets() == 2


def test_stall_sends_the_first_bytes_then_goes_silent(hub):
    import socket

    hub.stall("org/tiny", "model.safetensors", after_bytes=1000)
    req = urllib.request.Request(f"{hub.url}/org/tiny/resolve/main/model.safetensors")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200 and resp.read(1000) == (hub.root / "org/tiny/model.safetensors").read_bytes()[:1000]
        resp.fp.raw._sock.settimeout(0.3)
        with pytest.raises((socket.timeout, TimeoutError)):
            resp.read(1)


def test_api_answer_overrides_every_api_call(hub):
    hub.api_answer = (200, b"{not json")
    with urllib.request.urlopen(f"{hub.url}/api/models/org/tiny") as resp:
        assert resp.read() == b"{not json"
    hub.api_answer = (418, b"{}")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{hub.url}/api/models/org/tiny/tree/main")
    assert info.value.code == 418
    hub.api_answer = None
    with urllib.request.urlopen(f"{hub.url}/org/tiny/resolve/main/config.json") as resp:  # files unaffected
        assert resp.status == 200


def test_cli_serves_a_folder(hub_root):
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.hub_emulator", "--root", str(hub_root), "--gated", "org/gated",
         "--token", GRANTED_TOKEN],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:")
        url = line.split()[1]
        info = HfApi(endpoint=url, token=False).model_info("org/tiny")
        assert len(info.sha) == 40
        with pytest.raises(GatedRepoError):
            get_hf_file_metadata(hf_hub_url("org/gated", "config.json", endpoint=url), token=False)
    finally:
        proc.terminate()
        proc.wait(5)


def test_every_byte_sent_to_a_client_is_counted(hub):
    assert hub.sent_bytes() == 0
    data = (hub.root / "org/tiny/model.safetensors").read_bytes()
    with urllib.request.urlopen(f"{hub.url}/org/tiny/resolve/main/model.safetensors") as resp:
        assert resp.read() == data
    assert 100 < hub.sent_bytes() - len(data) < 1000  # the body, its status line and headers
    before = hub.sent_bytes()
    HfApi(endpoint=hub.url, token=False).model_info("org/tiny")
    assert hub.sent_bytes() > before

"""The calls that talk to the Hub: the commit a ref names, a repo's files, access, and downloads."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from kaito_runtime.errors import WeightsError
from kaito_runtime.hub.timeouts import bounded
from kaito_runtime.secrets import Secret
from kaito_runtime.types import COMMIT_RE, RemoteFile

from kaito_runtime.hub.repo_ids import RECEIVE_CHUNK_BYTES, client_token
from kaito_runtime.hub.failures import retrying_when_busy

logger = logging.getLogger("kaito_runtime.hub")
T = TypeVar("T")

# --- metadata calls ---------------------------------------------------------------------------


def _api(endpoint: str, token: Secret | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=client_token(token))


def resolve_revision(repo_id: str, revision: str | None, *, token: Secret | None, endpoint: str) -> tuple[str, bool]:
    """(40-hex commit, gated) for a branch, tag or commit (one model-info call)."""
    what = f"model info of {repo_id}"

    def ask() -> Any:
        with bounded(what):
            return _api(endpoint, token).model_info(repo_id, revision=revision or "main")

    info = retrying_when_busy(what, ask)
    if not info.sha or not COMMIT_RE.match(info.sha):
        raise WeightsError(
            f"The Hub at {endpoint} gave no commit for {repo_id}@{revision or 'main'}",
            fix="check HF_ENDPOINT points at a Hugging Face Hub",
        )
    return info.sha, bool(info.gated)


def list_files(repo_id: str, commit: str, *, token: Secret | None, endpoint: str) -> tuple[RemoteFile, ...]:
    from huggingface_hub.hf_api import RepoFile

    what = f"the file list of {repo_id}"

    def ask() -> list[RemoteFile]:
        out = []
        with bounded(what):
            for entry in _api(endpoint, token).list_repo_tree(repo_id, recursive=True, revision=commit):
                if isinstance(entry, RepoFile):
                    sha256 = entry.lfs.sha256 if entry.lfs is not None else None
                    out.append(RemoteFile(entry.path, int(entry.size), entry.blob_id, sha256))
        return out

    return tuple(sorted(retrying_when_busy(what, ask), key=lambda f: f.path))


def probe_access(repo_id: str, commit: str, filename: str, *, token: Secret | None, endpoint: str) -> None:
    """One HEAD on a file: gated / bad-token failures surface here, in about a second."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    what = f"{filename} of {repo_id}"

    def ask() -> None:
        with bounded(what):
            get_hf_file_metadata(url, token=client_token(token), endpoint=endpoint)

    retrying_when_busy(what, ask)


def http_download_limit() -> int:
    """The largest file the client fetches over plain HTTP (bigger ones need Xet)."""
    from huggingface_hub import constants

    return int(constants.MAX_HTTP_DOWNLOAD_SIZE)


def download_range(
    repo_id: str,
    commit: str,
    filename: str,
    out: BinaryIO,
    *,
    resume_size: int,
    expected_size: int,
    token: Secret | None,
    endpoint: str,
    tqdm_class: type | None = None,
) -> None:
    """Append the bytes of ``filename`` after its first ``resume_size`` to ``out``.

    The client's own ``http_get``: a ``Range: bytes=<resume_size>-`` request when resuming, its
    retries (with Range) on dropped connections, its status-to-error mapping, and its check that
    ``resume_size`` + received == ``expected_size`` (an ``OSError`` without errno otherwise). A
    server that ignores Range answers 200; ``http_get`` then truncates ``out`` and starts over.
    Redirects to a CDN are followed without the Authorization header (httpx drops it off-host).
    Raises HubTimeout once no byte has arrived for ``KAITO_HUB_TIMEOUT`` seconds.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    receive_in_small_chunks()
    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    with bounded(filename):
        http_get(
            url,
            out,
            resume_size=resume_size,
            headers=build_hf_headers(token=client_token(token)),
            expected_size=expected_size,
            displayed_filename=filename,
            tqdm_class=tqdm_class,
        )


def receive_in_small_chunks() -> None:
    """Make the client write (and report) a download body as it arrives, not every 10 MiB.

    ``http_get`` reads ``constants.DOWNLOAD_CHUNK_SIZE`` at each call and holds that many bytes in
    memory before the first write or progress update: on a slow link the partial file and the
    progress stood still for minutes, and a killed run lost up to 10 MiB per file. The constant
    is process-wide (the client has no per-call setting); smaller chunks only make its downloads
    write sooner, at the same throughput.
    """
    from huggingface_hub import constants

    if constants.DOWNLOAD_CHUNK_SIZE > RECEIVE_CHUNK_BYTES:
        constants.DOWNLOAD_CHUNK_SIZE = RECEIVE_CHUNK_BYTES


def download_whole(
    repo_id: str, commit: str, filename: str, local_dir: Path, *, token: Secret | None, endpoint: str, tqdm_class: type | None = None
) -> Path:
    """``hf_hub_download`` into ``local_dir`` (Xet when available; restarts from zero if interrupted).

    Its HTTP requests get the hub timeout each, but no silence limit across them: a Xet transfer
    moves its bytes outside the hooks' sight, so a later request (a Xet token refresh) must not be
    refused for the silence the hooks saw meanwhile. A stalled Xet transfer is not bounded by us.
    """
    from huggingface_hub import hf_hub_download

    receive_in_small_chunks()
    with bounded(filename, stops_retries=False):
        return Path(
            hf_hub_download(
                repo_id, filename, revision=commit, local_dir=local_dir, token=client_token(token), endpoint=endpoint,
                tqdm_class=tqdm_class,
            )
        )

"""What planning reads from the Hub without the weights: config.json, file sizes, gated flag, safetensors headers."""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any, TypeVar

from kaito_runtime.errors import WeightsError
from kaito_runtime.hub.timeouts import bounded, current_timeout_s
from kaito_runtime.secrets import Secret
from kaito_runtime.types import RemoteModel

from kaito_runtime.hub.repo_ids import check_repo_id, client_token, resolve_endpoint
from kaito_runtime.hub.failures import hub_errors, retrying_when_busy
from kaito_runtime.hub.client import _api, list_files, resolve_revision

logger = logging.getLogger("kaito_runtime.hub")
T = TypeVar("T")

def _read_json_file(repo_id: str, commit: str, filename: str, *, token: Secret | None, endpoint: str) -> dict | None:
    from huggingface_hub import hf_hub_download

    what = f"{filename} of {repo_id}"
    with tempfile.TemporaryDirectory(prefix="kaito-meta-") as tmp:

        def ask() -> str:
            with bounded(what):
                return hf_hub_download(
                    repo_id, filename, revision=commit, local_dir=tmp, token=client_token(token), endpoint=endpoint
                )

        path = retrying_when_busy(what, ask)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:  # also UnicodeDecodeError
            raise WeightsError(
                f"{filename} of {repo_id} at {commit[:12]} on {endpoint} is not valid JSON",
                why=f"{type(e).__name__}: {e}",
                fix="check the repo (its config files must be JSON) or pick another revision",
            ) from None
    if not isinstance(data, dict):
        raise WeightsError(
            f"{filename} of {repo_id} at {commit[:12]} on {endpoint} is not a JSON object",
            why=f"it holds a {type(data).__name__}",
            fix="check the repo (its config files must be JSON objects) or pick another revision",
        )
    return data


def fetch_model_metadata(
    repo_id: str,
    revision: str | None = None,
    *,
    token: Secret | None,
    endpoint: str | None = None,
    token_source: str | None = None,
) -> RemoteModel:
    """config.json (and params.json), the file list with sizes, the resolved commit, gated flag.

    For ``--model ORG/NAME`` the lead builds a ModelSpec from this before planning; the commit
    returned pins the later weight download.
    """
    check_repo_id(repo_id)
    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    with hub_errors(repo_id=repo_id, revision=revision, token_source=source, endpoint=ep):
        commit, gated = resolve_revision(repo_id, revision, token=token, endpoint=ep)
        files = list_files(repo_id, commit, token=token, endpoint=ep)
        names = {f.path for f in files}
        config = _read_json_file(repo_id, commit, "config.json", token=token, endpoint=ep) if "config.json" in names else None
        params = _read_json_file(repo_id, commit, "params.json", token=token, endpoint=ep) if "params.json" in names else None
    return RemoteModel(repo_id, commit, files, gated=gated, config=config, params=params)


# --- safetensors headers ----------------------------------------------------------------------

HEADER_READERS = 8  # shard headers read at once (one or two small Range requests each)
SAFETENSORS_INDEX = "model.safetensors.index.json"

# One tensor as the header describes it: dtype, shape, bytes (its data_offsets span).
TensorEntry = tuple[str, tuple[int, ...], int]


def _header_of(api: Any, repo_id: str, commit: str, filename: str) -> dict[str, TensorEntry]:
    what = f"the safetensors header of {filename} of {repo_id}"

    def ask() -> Any:
        with bounded(what):
            return api.parse_safetensors_file_metadata(repo_id, filename, revision=commit, timeout=current_timeout_s())

    meta = retrying_when_busy(what, ask)
    return {
        name: (str(info.dtype), tuple(int(d) for d in info.shape), int(info.data_offsets[1]) - int(info.data_offsets[0]))
        for name, info in meta.tensors.items()
    }


def safetensors_index(repo_id: str, commit: str, *, token: Secret | None, endpoint: str | None, token_source: str | None = None) -> dict | None:
    """``model.safetensors.index.json`` (read into a temporary folder, so nothing stays on disk)."""
    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    with hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep):
        return _read_json_file(repo_id, commit, SAFETENSORS_INDEX, token=token, endpoint=ep)


def safetensors_headers(
    repo_id: str,
    commit: str,
    filenames: list[str] | tuple[str, ...],
    *,
    token: Secret | None,
    endpoint: str | None = None,
    token_source: str | None = None,
) -> dict[str, dict[str, TensorEntry]]:
    """The headers of these safetensors files of ``repo_id`` at ``commit``, file -> tensor ->
    (dtype, shape, bytes), through the client's public metadata calls: Range requests on the
    first bytes of each file (``bytes=0-100000``, and one more for a longer header), never a body.

    A single ``model.safetensors`` goes through ``get_safetensors_metadata``; shards and other
    names through ``parse_safetensors_file_metadata`` each, several at once (the index is read by
    the caller: ``get_safetensors_metadata`` would leave it in the client's cache, and a dry run
    writes nothing). The client's progress bars stay off meanwhile.
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    wanted = sorted(set(filenames))
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep):
            api = _api(ep, token)
            if wanted == ["model.safetensors"]:
                what = f"the safetensors header of {repo_id}"

                def ask() -> Any:
                    with bounded(what):
                        return api.get_safetensors_metadata(repo_id, revision=commit, timeout=current_timeout_s())

                meta = retrying_when_busy(what, ask).files_metadata["model.safetensors"]
                return {
                    "model.safetensors": {
                        name: (str(i.dtype), tuple(int(d) for d in i.shape), int(i.data_offsets[1]) - int(i.data_offsets[0]))
                        for name, i in meta.tensors.items()
                    }
                }
            with ThreadPoolExecutor(max_workers=min(HEADER_READERS, max(1, len(wanted)))) as pool:
                read = list(pool.map(lambda name: _header_of(api, repo_id, commit, name), wanted))
            return dict(zip(wanted, read))
    finally:
        if not bars_were_off:
            enable_progress_bars()

"""A model that is not a preset: a local folder, or any Hugging Face repo id read from the hub."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from kaito_runtime.errors import HubUnreachableError, InputError
from kaito_runtime.model_files import check_model_folder, weight_files
from kaito_runtime.model.hf_config import read_config_json, spec_from_hf_config
from kaito_runtime import hub
from kaito_runtime.hub import check_repo_id, repo_id_problem
from kaito_runtime.secrets import Secret
from kaito_runtime.types import ModelSpec, RemoteFile, RemoteModel

__all__ = [
    "check_repo_id",
    "folder_weights_bytes",
    "remote_metadata",
    "repo_id_problem",
    "served_name_for",
    "spec_from_folder",
    "spec_from_hub",
    "weights_bytes",
]

logger = logging.getLogger(__name__)


def served_name_for(model: str) -> str:
    """KAITO main's convention: the lower-cased last part of the repo id or folder."""
    return Path(model.rstrip("/")).name.lower()


def folder_weights_bytes(folder: Path, load_format: str = "hf") -> int:
    """Bytes of the one weight format vLLM will load from the folder (``file_selection.weight_files``)."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return sum(sizes[name] for name in weight_files(sizes, load_format))


def weights_bytes(files: Sequence[RemoteFile], load_format: str = "hf") -> int:
    """Bytes of the weight files vLLM loads among ``files`` (the selection the weights step fetches)."""
    chosen = set(weight_files([f.path for f in files], load_format))
    return sum(f.size for f in files if f.path in chosen)


def spec_from_folder(folder: Path, *, trust_remote_code: bool = False) -> ModelSpec:
    check_model_folder(folder)
    config = read_config_json(folder / "config.json")
    return spec_from_hf_config(
        config,
        name=served_name_for(str(folder)),
        weights_bytes=folder_weights_bytes(folder),
        local_path=str(folder.resolve()),
        trust_remote_code=trust_remote_code,
    )


LocalCopy = Callable[[str, "str | None"], "RemoteModel | None"]


def remote_metadata(
    repo_id: str,
    *,
    revision: str | None,
    token: Secret | None,
    token_source: str | None = None,
    endpoint: str | None,
    offline: bool,
    local_copy: LocalCopy,
) -> RemoteModel:
    """config.json, file sizes, resolved commit and gated flag of a repo, for building a ModelSpec.

    Offline it reads them from the complete local copy that ``local_copy(repo_id, revision)``
    returns (the weights step's store, handed in by the API); online it asks the Hub, falling back
    to that copy when the Hub cannot be reached. Writes nothing."""
    check_repo_id(repo_id)
    if offline:
        local = local_copy(repo_id, revision)
        if local is None:
            raise HubUnreachableError(
                f"Offline mode, and no complete copy of {repo_id}@{revision or 'main'} is in the weights folder",
                fix="run once online to pre-fetch the weights into the same weights folder, or drop --offline",
            )
        return local
    try:
        return hub.fetch_model_metadata(repo_id, revision, token=token, endpoint=endpoint, token_source=token_source)
    except HubUnreachableError:
        local = local_copy(repo_id, revision)
        if local is None:
            raise
        logger.warning("model: hub unreachable; reading %s from the complete copy at %s", repo_id, local.revision[:12])
        return local


def spec_from_hub(repo_id: str, remote: RemoteModel, *, trust_remote_code: bool = False) -> ModelSpec:
    """The ModelSpec of a hub model from what the hub (or the local copy) says about it."""
    return spec_from_hf_config(
        remote.config,
        name=served_name_for(repo_id),
        weights_bytes=weights_bytes(remote.files),
        repo_id=repo_id,
        revision=remote.revision,
        gated=remote.gated,
        trust_remote_code=trust_remote_code,
    )

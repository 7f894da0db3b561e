"""A model that is not a preset: a local folder, or any Hugging Face repo id read from the hub."""

from __future__ import annotations

from pathlib import Path

from kaito_runtime.errors import InputError
from kaito_runtime.file_selection import WEIGHT_FILES_RULE, has_weights, weight_files
from kaito_runtime.hf_config import read_config_json, spec_from_hf_config
from kaito_runtime.hub import check_repo_id, repo_id_problem
from kaito_runtime.values import ModelSpec

__all__ = ["check_repo_id", "folder_weights_bytes", "repo_id_problem", "served_name_for", "spec_from_folder", "spec_from_hub"]


def served_name_for(model: str) -> str:
    """KAITO main's convention: the lower-cased last part of the repo id or folder."""
    return Path(model.rstrip("/")).name.lower()


def folder_weights_bytes(folder: Path, load_format: str = "hf") -> int:
    """Bytes of the one weight format vLLM will load from the folder (``file_selection.weight_files``)."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return sum(sizes[name] for name in weight_files(sizes, load_format))


def spec_from_folder(folder: Path) -> ModelSpec:
    if not folder.is_dir():
        raise InputError(
            f"Model folder {folder} does not exist",
            fix="pass an existing folder holding config.json and the weights, or a Hugging Face id (org/name)",
        )
    config = read_config_json(folder / "config.json")
    if not has_weights(p.name for p in folder.iterdir() if p.is_file()):
        raise InputError(
            f"Model folder {folder} holds no weight files",
            why=f"it has none of the files vLLM loads ({WEIGHT_FILES_RULE})",
            fix="download the weights into the folder first (kaito-run --model ORG/NAME --download-only)",
        )
    return spec_from_hf_config(
        config,
        name=served_name_for(str(folder)),
        weights_bytes=folder_weights_bytes(folder),
        local_path=str(folder.resolve()),
    )


def spec_from_hub(
    repo_id: str,
    *,
    revision: str | None,
    token,
    token_source: str | None = None,
    endpoint: str | None,
    offline: bool,
    weights_dir: Path,
) -> ModelSpec:
    """Read config.json and the file sizes from the hub (or a complete local copy when offline).

    A malformed ``repo_id`` is an InputError (exit 2) before anything is read."""
    from kaito_runtime import weights

    check_repo_id(repo_id)
    remote = weights.fetch_model_metadata(
        repo_id, revision, token=token, token_source=token_source, endpoint=endpoint, offline=offline,
        weights_dir=weights_dir,
    )
    return spec_from_hf_config(
        remote.config,
        name=served_name_for(repo_id),
        weights_bytes=remote.weights_bytes,
        repo_id=repo_id,
        revision=remote.commit,
        gated=remote.gated,
    )

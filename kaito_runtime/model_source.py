"""A model that is not a preset: a local folder, or any Hugging Face repo id read from the hub."""

from __future__ import annotations

from pathlib import Path

from kaito_runtime.errors import InputError
from kaito_runtime.file_selection import WEIGHT_FILES_RULE, has_weights, weight_files
from kaito_runtime.hf_config import read_config_json, spec_from_hf_config
from kaito_runtime.hub import check_repo_id, repo_id_problem
from kaito_runtime.values import ModelSpec

__all__ = [
    "check_model_folder",
    "check_repo_id",
    "folder_weights_bytes",     "repo_id_problem",
    "served_name_for",
    "spec_from_folder",
    "spec_from_hub",
]


def served_name_for(model: str) -> str:
    """KAITO main's convention: the lower-cased last part of the repo id or folder."""
    return Path(model.rstrip("/")).name.lower()


def folder_weights_bytes(folder: Path, load_format: str = "hf") -> int:
    """Bytes of the one weight format vLLM will load from the folder (``file_selection.weight_files``)."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return sum(sizes[name] for name in weight_files(sizes, load_format))


def check_model_folder(folder: Path) -> list[str]:
    """The one rule for a local model folder: it exists, holds ``config.json`` and at least one
    weight file vLLM loads. Returns the names of the files at its top level; InputError if not."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"Model folder {folder} does not exist or is not a folder",
            fix="pass an existing folder holding config.json and the weights, or a Hugging Face id (org/name)",
        )
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError as e:
        raise InputError(
            f"Model folder {folder} cannot be read",
            why=e.strerror or type(e).__name__,
            fix="check the folder's permissions and the volume mounted there",
        ) from None
    if "config.json" not in names:
        raise InputError(
            f"Model folder {folder} has no config.json",
            why="vLLM and the planner read the model's shape from the Hugging Face config.json",
            fix="point --model at the folder that holds the model's config.json",
        )
    if not has_weights(names):
        raise InputError(
            f"Model folder {folder} holds no weight files",
            why=f"It has none of the files vLLM loads ({WEIGHT_FILES_RULE})",
            fix="download the weights into the folder first (kaito-run --model ORG/NAME --download-only)",
        )
    return names


def spec_from_folder(folder: Path) -> ModelSpec:
    check_model_folder(folder)
    config = read_config_json(folder / "config.json")
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

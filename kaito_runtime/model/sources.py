"""A model that is not a preset: a local folder, or any Hugging Face repo id read from the hub."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol
from dataclasses import replace
from pathlib import Path

from kaito_runtime.errors import HubUnreachableError, InputError
from kaito_runtime.model.files import check_model_folder, weight_files
from kaito_runtime.model.hf_config import read_config_json, spec_from_hf_config
from kaito_runtime import hub
from kaito_runtime.hub import check_repo_id, repo_id_problem
from kaito_runtime.secrets import Secret
from kaito_runtime.model.sizes import NO_SAFETENSORS, figures_from_file_sizes, figures_from_headers, read_header
from kaito_runtime.types import ModelSpec, RemoteFile, RemoteModel, WeightsFigures, WeightsSource

SAFETENSORS_INDEX = "model.safetensors.index.json"

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
    """Bytes of the one weight format vLLM will load from the folder (``files.weight_files``)."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    return sum(sizes[name] for name in weight_files(sizes, load_format))


def weights_bytes(files: Sequence[RemoteFile], load_format: str = "hf") -> int:
    """Bytes of the weight files vLLM loads among ``files`` (the selection the weights step fetches)."""
    chosen = set(weight_files([f.path for f in files], load_format))
    return sum(f.size for f in files if f.path in chosen)


def _indexed(chosen: list[str], index: dict | None) -> list[str]:
    """vLLM's rule: with a safetensors index, the shards it does not name are not loaded."""
    listed = set((index or {}).get("weight_map", {}).values()) if isinstance((index or {}).get("weight_map"), dict) else set()
    kept = [n for n in chosen if n in listed]
    return kept or chosen


def folder_weights_figures(folder: Path, load_format: str = "hf", config: dict | None = None) -> WeightsFigures:
    """The figures of the weight files vLLM loads from a folder, from their headers on disk."""
    sizes = {p.name: p.stat().st_size for p in folder.iterdir() if p.is_file()}
    chosen = weight_files(sizes, load_format)
    st = [n for n in chosen if n.endswith(".safetensors")]
    if not st:
        return figures_from_file_sizes({n: sizes[n] for n in chosen}, NO_SAFETENSORS)
    index_path = folder / SAFETENSORS_INDEX
    if index_path.is_file() and not st[0].startswith("consolidated"):
        st = _indexed(st, read_config_json(index_path))
    return figures_from_headers({n: read_header(folder / n) for n in st}, config)


def hub_weights_figures(
    remote: RemoteModel, *, token: Secret | None, token_source: str | None, endpoint: str | None, load_format: str = "hf"
) -> WeightsFigures:
    """The figures of the weight files vLLM loads from a hub repo, from the shard headers (Range
    requests on the first bytes of each file; no body is fetched)."""
    chosen = weight_files([f.path for f in remote.files], load_format)
    st = [n for n in chosen if n.endswith(".safetensors")]
    if not st:
        return figures_from_file_sizes({f.path: f.size for f in remote.files if f.path in chosen}, NO_SAFETENSORS)
    if SAFETENSORS_INDEX in {f.path for f in remote.files} and not st[0].startswith("consolidated"):
        index = hub.safetensors_index(remote.repo_id, remote.revision, token=token, endpoint=endpoint, token_source=token_source)
        st = _indexed(st, index)
    headers = hub.safetensors_headers(
        remote.repo_id, remote.revision, st, token=token, endpoint=endpoint, token_source=token_source
    )
    return figures_from_headers(headers, remote.config)


def spec_from_folder(folder: Path, *, trust_remote_code: bool = False, sizes: bool = True) -> ModelSpec:
    """``sizes``: read the weight files' headers (False: only their sizes, for --download-only)."""
    check_model_folder(folder)
    config = read_config_json(folder / "config.json")
    spec = spec_from_hf_config(
        config,
        name=served_name_for(str(folder)),
        weights_bytes=folder_weights_bytes(folder),
        local_path=str(folder.resolve()),
        trust_remote_code=trust_remote_code,
    )
    if not sizes:
        return spec
    return with_figures(replace(spec, generated_from="folder metadata"), folder_weights_figures(folder, spec.load_format, config))


def with_figures(spec: ModelSpec, figures: WeightsFigures) -> ModelSpec:
    """The spec sized by its files' own figures: the exact tensor bytes for planning, and the
    checkpoint's quantization method when config.json did not say."""
    return replace(
        spec,
        weights_figures=figures,
        weights_bytes=figures.stored_bytes if figures.stored_bytes > 0 else spec.weights_bytes,
        quantization=spec.quantization or figures.quantization,
        params_billions=billions(figures.parameter_count) if figures.parameter_count else spec.params_billions,
    )


def billions(parameter_count: int) -> float:
    """A parameter count in billions: two decimals, or (a small model, where two decimals give
    0.0) two significant digits, so that a model of 220 thousand parameters is 0.00022, not 0."""
    rounded = round(parameter_count / 1e9, 2)
    return rounded if rounded > 0 else float(f"{parameter_count / 1e9:.2g}")


class LocalCopies(Protocol):
    """The one thing the model step may ask the weights store, before the plan: what a complete
    local copy of ``repo_id@revision`` says about it (None when there is none). The API hands
    in the weights step's reader (``weights.LocalCopies``); the model step never imports it."""

    def metadata(self, repo_id: str, revision: str | None) -> RemoteModel | None: ...

    def is_complete(self, model: WeightsSource) -> bool: ...


class _NoLocalCopies:
    def metadata(self, repo_id: str, revision: str | None) -> RemoteModel | None:
        return None

    def is_complete(self, model: WeightsSource) -> bool:
        return False


NO_LOCAL_COPIES: LocalCopies = _NoLocalCopies()


def remote_metadata(
    repo_id: str,
    *,
    revision: str | None,
    token: Secret | None,
    token_source: str | None = None,
    endpoint: str | None,
    offline: bool,
    local_copies: LocalCopies = NO_LOCAL_COPIES,
) -> RemoteModel:
    """config.json, file sizes, resolved commit and gated flag of a repo, for building a ModelSpec.

    Offline it reads them from the complete local copy ``local_copies`` finds (the weights
    step's store, handed in by the API); online it asks the Hub, falling back
    to that copy when the Hub cannot be reached. Writes nothing."""
    check_repo_id(repo_id)
    if offline:
        local = local_copies.metadata(repo_id, revision)
        if local is None:
            raise HubUnreachableError(
                f"Offline mode, and no complete copy of {repo_id}@{revision or 'main'} is in the weights folder",
                fix="run once online to pre-fetch the weights into the same weights folder, or drop --offline",
            )
        return local
    try:
        return hub.fetch_model_metadata(repo_id, revision, token=token, endpoint=endpoint, token_source=token_source)
    except HubUnreachableError:
        local = local_copies.metadata(repo_id, revision)
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

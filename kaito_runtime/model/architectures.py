"""Whether the pinned vLLM serves a model's architecture, from the shipped list
(``presets/vllm/architectures.yaml``, generated from vLLM's model registry by
``scripts/gen_vllm_architectures.py``). No vLLM import: the list is known on a laptop too.

The check runs on ``config.json``'s ``architectures`` before any other field is read, so an
encoder-decoder or a pooling-only model is refused for what it is, not for a missing key.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

import kaito_runtime.settings as data
from kaito_runtime.errors import InputError


@dataclass(frozen=True)
class ServedArchitectures:
    vllm_version: str
    text_generation: frozenset[str]
    multimodal_generation: frozenset[str]
    transformers_backend: frozenset[str]
    other_tasks: frozenset[str]
    removed: Mapping[str, str]

    def generates(self, architecture: str) -> bool:
        return architecture in self.text_generation or architecture in self.multimodal_generation

    def kind(self, architecture: str) -> str | None:
        """'text' or 'multimodal' for a generation architecture, None otherwise."""
        if architecture in self.text_generation:
            return "text"
        if architecture in self.multimodal_generation:
            return "multimodal"
        return None


@functools.lru_cache(maxsize=1)
def served_architectures() -> ServedArchitectures:
    path = data.vllm_architectures_path()
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    return ServedArchitectures(
        vllm_version=str(raw["vllm_version"]),
        text_generation=frozenset(raw["text_generation"]),
        multimodal_generation=frozenset(raw["multimodal_generation"]),
        transformers_backend=frozenset(raw["transformers_backend"]),
        other_tasks=frozenset(raw["other_tasks"]),
        removed=dict(raw.get("removed") or {}),
    )


def _ships_model_code(config: Mapping[str, Any]) -> bool:
    """The repo brings its own modelling code (``auto_map``): vLLM's Transformers backend may
    load such a model with trust_remote_code. Without it, the flag changes nothing."""
    auto_map = config.get("auto_map")
    return isinstance(auto_map, dict) and any(
        isinstance(k, str) and k.startswith("AutoModel") for k in auto_map
    )


def check_served(
    config: Mapping[str, Any], source: str, *, trust_remote_code: bool = False
) -> str | None:
    """The first of ``config['architectures']`` the pinned vLLM serves for generation.

    Raises InputError (exit 2) naming the architecture and the vLLM version when none is served.
    A repo with its own model code (``auto_map``) run with --trust-remote-code passes (vLLM may
    load it through its Transformers backend): None is returned then. A config without an
    ``architectures`` list is left to the caller's own error.
    """
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) and a for a in archs):
        return None
    served = served_architectures()
    for arch in archs:
        if served.generates(arch):
            return arch
    if trust_remote_code and _ships_model_code(config):
        return None
    arch = archs[0]
    version = served.vllm_version
    listed = " / ".join(archs)
    if arch in served.other_tasks:
        why = f"vLLM {version} serves {arch} only for pooling (embeddings, classification, rewards) or drafting, not for text generation"
    elif arch in served.removed:
        why = f"vLLM served {arch} up to version {served.removed[arch]}; {version} no longer does"
    else:
        why = f"{arch} is in neither of vLLM {version}'s generation lists (text or multimodal)"
    if _ships_model_code(config):
        fix = (
            "the repo ships its own model code (config.json auto_map): pass -- --trust-remote-code "
            "to let vLLM try it through its Transformers backend (it runs that code), or pick a model "
            "with a served architecture"
        )
    else:
        fix = f"pick a model whose architecture vLLM {version} serves (listed in {data.vllm_architectures_path().name})"
    raise InputError(f"{listed} (from {source}) is not served by vLLM {version}", why=why, fix=fix)

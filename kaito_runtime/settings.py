"""Two leaves every step may read: where the shipped data files (preset catalog, GPU SKU table)
live, and numeric settings read from environment variables (refused clearly when malformed).

Installed from a wheel they sit inside the package (``kaito_runtime/presets``); in a source
checkout or an editable install they are the repository's top-level ``presets/`` folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kaito_runtime.numbers import DurationRange, seconds

_PACKAGE_DIR = Path(__file__).resolve().parent


def presets_dir() -> Path:
    bundled = _PACKAGE_DIR / "presets"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / "presets"


def shipped_chat_templates_dir() -> Path:
    """kaito-runtime's own chat templates, for presets whose template is not in the configured folder."""
    return presets_dir() / "chat_templates"


def gpu_sku_table_path() -> Path:
    return presets_dir() / "hardware" / "gpu-skus.yaml"


def seconds_from_env(env: Mapping[str, str], name: str, default: float, allowed: DurationRange) -> float:
    """``name`` as seconds within ``allowed`` (finite, read as kaito_runtime.numbers reads every
    duration); ``default`` when unset or empty. InputError (exit 2) naming the variable otherwise."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    return seconds(raw, allowed, name=name, subject=f"{name}={raw!r}", fix=f"set {name} to e.g. {default:g}, or unset it")


def vllm_memory_table_path() -> Path:
    """The planner's constants per vLLM version line (and CUDA memory per GPU)."""
    return presets_dir() / "vllm" / "memory.yaml"


def vllm_architectures_path() -> Path:
    """The architectures the pinned vLLM serves (generated from its model registry)."""
    return presets_dir() / "vllm" / "architectures.yaml"


def parser_rules_path() -> Path:
    """Tool-call / reasoning parser rules for models that are not presets."""
    return presets_dir() / "vllm" / "parsers.yaml"

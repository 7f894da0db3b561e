"""Two leaves every step may read: where the shipped data files (preset catalog, GPU SKU table)
live, and numeric settings read from environment variables (refused clearly when malformed).

Installed from a wheel they sit inside the package (``kaito_runtime/presets``); in a source
checkout or an editable install they are the repository's top-level ``presets/`` folder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from kaito_runtime.errors import InputError

_PACKAGE_DIR = Path(__file__).resolve().parent


def presets_dir() -> Path:
    bundled = _PACKAGE_DIR / "presets"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / "presets"


def gpu_sku_table_path() -> Path:
    return presets_dir() / "hardware" / "gpu-skus.yaml"


def seconds_from_env(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    """``name`` as a finite number of seconds (above 0, or 0 or more with ``allow_zero``);
    ``default`` when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    smallest_ok = value >= 0 if allow_zero else value > 0
    if not (smallest_ok and math.isfinite(value)):
        bound = "0 or more" if allow_zero else "above 0"
        raise InputError(
            f"{name}={raw!r} is not a number of seconds ({bound})",
            fix=f"set {name} to e.g. {default:g}, or unset it",
        )
    return value


def vllm_memory_table_path() -> Path:
    """The planner's constants per vLLM version line (and CUDA memory per GPU)."""
    return presets_dir() / "vllm" / "memory.yaml"


def vllm_architectures_path() -> Path:
    """The architectures the pinned vLLM serves (generated from its model registry)."""
    return presets_dir() / "vllm" / "architectures.yaml"

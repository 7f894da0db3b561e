"""Where the shipped data files (preset catalog, GPU SKU table) live.

Installed from a wheel they sit inside the package (``kaito_runtime/presets``); in a source
checkout or an editable install they are the repository's top-level ``presets/`` folder.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def presets_dir() -> Path:
    bundled = _PACKAGE_DIR / "presets"
    if bundled.is_dir():
        return bundled
    return _PACKAGE_DIR.parent / "presets"


def gpu_sku_table_path() -> Path:
    return presets_dir() / "hardware" / "gpu-skus.yaml"

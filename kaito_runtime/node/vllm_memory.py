"""What the pinned vLLM does with this node's GPU memory: one version line of
presets/vllm/memory.yaml read into a ``VllmMemoryProfile`` (types.py) for the planner.

The planner reads no file (import contract); the API loads the profile here and hands it to
``plan_launch``, and the accuracy benchmark loads the same way, so both plan with one table.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from kaito_runtime.errors import CatalogError
from kaito_runtime.settings import vllm_memory_table_path
from kaito_runtime.types import BatchDefault, VllmMemoryProfile

# The figures every version line must have (after ``inherits``), each with a value and a source.
FIGURES = (
    "default_gpu_memory_utilization", "cudagraph_estimate_in_budget", "in_flight_batches",
    "max_model_len_auto", "block_size", "non_torch_single_gpu", "non_torch_tensor_parallel",
    "non_torch_pipeline_parallel", "activation_base", "activation_per_vocab_seq", "activation_moe",
    "activation_mla", "activation_sliding_window", "activation_pipeline_inner_stage", "cudagraph_base",
    "cudagraph_per_layer", "weights_extra", "multimodal_replicated_fraction", "uncalibrated_margin",
    "full_context_margin",
)


def line_of(version: str) -> str:
    """'0.32.0' -> '0.32'."""
    return ".".join(version.split(".")[:2])


def profile_from_table(table: Mapping[str, Any], line: str | None = None) -> VllmMemoryProfile:
    """One line of the parsed table (the pinned one by default), with ``inherits`` resolved.
    Raises ``CatalogError`` naming an unknown line or a missing figure."""
    pinned = str(table["pinned"])
    lines = table["lines"]
    wanted = line or line_of(pinned)
    if wanted not in lines:
        raise CatalogError(
            f"presets/vllm/memory.yaml has no constants for vLLM {wanted}",
            fix="use one of the lines " + ", ".join(lines),
        )
    chain, name = [], wanted
    while name:
        chain.append(lines[name])
        name = lines[name].get("inherits")
    merged: dict[str, Any] = {}
    for entry in reversed(chain):
        merged.update(entry)
    missing = [f for f in FIGURES if f not in merged]
    if missing:
        raise CatalogError(f"presets/vllm/memory.yaml line {wanted} lacks {', '.join(missing)}")
    return VllmMemoryProfile(
        line=wanted,
        pinned=pinned,
        figures={f: merged[f]["value"] for f in FIGURES},
        sources={f: merged[f]["source"] for f in FIGURES},
        batch_defaults=tuple(
            BatchDefault(r["min_memory_gib"], r["exclude_name"], r["max_num_batched_tokens"], r["max_num_seqs"])
            for r in table["batch_defaults"]
        ),
        cuda_memory_gib={r["nvml_name"]: r["total_gib"] for r in table["cuda_memory"]},
        cuda_memory_fallback_ratio=table["cuda_memory_fallback_ratio"]["value"],
        calibrated_architectures=frozenset(table["calibrated_architectures"]),
        assumed_vocab_size=table["assumed_vocab_size"]["value"],
    )


def read_table(path: Path | None = None) -> dict[str, Any]:
    path = path or vllm_memory_table_path()
    try:
        table = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"Cannot read the vLLM memory table {path}", why=str(exc), fix="reinstall kaito-runtime") from None
    if not isinstance(table, dict):
        raise CatalogError(f"{path} is not a mapping", fix="reinstall kaito-runtime")
    return table


@functools.lru_cache(maxsize=4)
def load_profile(line: str | None = None) -> VllmMemoryProfile:
    """The shipped table's constants for ``line`` (default: the pinned vLLM's line), read once."""
    return profile_from_table(read_table(), line)

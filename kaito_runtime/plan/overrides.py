"""The user's planning overrides: refuse contradictory ones, and read the context and KV dtype they ask for.

Shared by the GPU and CPU planners; ``check_overrides`` runs before either, so both see only
overrides that make sense for the model.
"""

from __future__ import annotations

from kaito_runtime.errors import InputError
from kaito_runtime.vllm_flags import KNOWN_KV_CACHE_DTYPES
from kaito_runtime.types import ModelSpec, PlanOverrides

# KAITO sizes node counts for a 2048-token context unless the user sets max-model-len; we call
# a layout a fit only if at least this much context (or the model's whole context if smaller)
# fits in the KV cache.
MIN_CONTEXT = 2048


def check_overrides(model: ModelSpec, o: PlanOverrides) -> None:
    if o.max_model_len is not None:
        if o.max_model_len < 1:
            raise InputError(f"--max-model-len must be a positive number, got {o.max_model_len}")
        if o.max_model_len > model.max_context:
            raise InputError(
                f"--max-model-len {o.max_model_len} is longer than {model.name}'s context",
                why=f"The model's max_position_embeddings is {model.max_context}; vLLM refuses longer",
                fix=f"use --max-model-len <= {model.max_context}",
            )
    if o.gpu_memory_utilization is not None and not 0 < o.gpu_memory_utilization <= 1:
        raise InputError(
            f"--gpu-memory-utilization must be in (0, 1], got {o.gpu_memory_utilization}",
            fix="pass a fraction such as 0.9",
        )
    if o.kv_cache_dtype is not None and o.kv_cache_dtype not in KNOWN_KV_CACHE_DTYPES:
        raise InputError(
            f"Unknown --kv-cache-dtype {o.kv_cache_dtype!r}",
            fix="use one of " + ", ".join(KNOWN_KV_CACHE_DTYPES),
        )
    for flag, value in (("tensor-parallel-size", o.tensor_parallel_size), ("pipeline-parallel-size", o.pipeline_parallel_size)):
        if value is not None and value < 1:
            raise InputError(f"--{flag} must be >= 1, got {value}")
    pp = o.pipeline_parallel_size
    if pp is not None and pp > model.attention.num_layers:
        raise InputError(
            f"--pipeline-parallel-size {pp} is larger than {model.name}'s {model.attention.num_layers} layers",
            why="Each pipeline stage needs at least one layer",
            fix=f"use --pipeline-parallel-size <= {model.attention.num_layers}",
        )


def required_context(model: ModelSpec, o: PlanOverrides) -> int:
    """The context a plan must hold to count as a fit: the user's max-model-len, else MIN_CONTEXT."""
    return o.max_model_len if o.max_model_len is not None else min(MIN_CONTEXT, model.max_context)


def kv_cache_dtype_flag(o: PlanOverrides) -> str | None:
    """The --kv-cache-dtype to pass to vLLM; None when vLLM's own default ('auto') applies."""
    return None if o.kv_cache_dtype in (None, "auto") else o.kv_cache_dtype

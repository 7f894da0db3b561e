"""Memory arithmetic shared by the planners: KV bytes per token, utilization from free memory, and
the CPU planner's weights share (the GPU budget itself is vllm_budget.py, vLLM's own arithmetic).

Pure functions on the value types; the planner decides layouts, this module only counts bytes.
Every constant names its source (see /work/shared/reference: cluster-conventions.md "KAITO memory
estimation", vllm.md "Memory flags", vllm-cpu.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kaito_runtime.types import format_bytes, format_gib
from kaito_runtime.types import GiB, MiB, AttentionGeometry, GpuInfo, ModelSpec

# The CPU planner's weights in RAM: KAITO nodesestimator's "vLLM runtime representation is
# about 2 % larger" than the weight files. The GPU planner uses vLLM's own budget instead
# (vllm_budget.py: checkpoint bytes + measured buffers, presets/vllm/memory.yaml).
WEIGHT_EXPANSION = 1.02

# KAITO #1374: headroom kept free outside vLLM's budget when deriving the utilization from the
# free memory actually seen, and the cap on the result.
UTILIZATION_HEADROOM = 600 * MiB
UTILIZATION_CAP = 0.95

# vllm-cpu.md: the whole process tree of the CPU server peaked at 2.5 GiB (uni backend) to
# 3.3 GiB (mp backend) RSS for a 1.6 MB model; we take the larger figure as the fixed cost.
CPU_RUNTIME_OVERHEAD = int(3.3 * GiB)
# RAM we leave to the rest of the machine (page cache, the launcher itself, the user's shell).
CPU_HOST_HEADROOM = 1 * GiB

_DTYPE_BYTES = {
    "float32": 4,
    "fp32": 4,
    "float": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "auto": 2,
}



def kv_dtype_bytes(model_dtype: str, kv_cache_dtype: str | None) -> int:
    """Bytes per KV element: the model's activation dtype unless an explicit KV dtype is set.

    Quantized-weight models (fp8 DeepSeek, Ministral) still keep a 16-bit KV cache under "auto".
    """
    if kv_cache_dtype and kv_cache_dtype.startswith("fp8"):
        return 1
    if kv_cache_dtype and kv_cache_dtype != "auto":
        return _DTYPE_BYTES.get(kv_cache_dtype, 2)
    return _DTYPE_BYTES.get(model_dtype.lower(), 2)


def layers_per_stage(num_layers: int, pp: int) -> int:
    """Layers on the busiest pipeline stage.

    vLLM splits layers as evenly as it can and allows uneven splits (VLLM_PP_LAYER_PARTITION);
    the stage with ceil(layers / PP) layers is the one that must fit.
    """
    return math.ceil(num_layers / pp)


def weights_share_bytes(model: ModelSpec, tp: int, pp: int) -> int:
    """This GPU's share of the weights: 1.02 x weights x (busiest stage's layer fraction) / TP.

    KAITO divides by TP x PP; we use the busiest stage's fraction so uneven splits
    (61 layers over 2 stages = 31 + 30) are not under-counted.
    """
    layers = model.attention.num_layers
    fraction = layers_per_stage(layers, pp) / layers
    return math.ceil(model.weights_bytes * WEIGHT_EXPANSION * fraction / tp)


def weights_basis(model: ModelSpec, tp: int, pp: int) -> str:
    """How ``weights_share_bytes`` was counted, for messages: '131.4 GiB x 1.02 in memory', plus the
    split when there is one, so the figure can be traced to the preset's weight size."""
    text = f"{gib(model.weights_bytes)} x {WEIGHT_EXPANSION:g} in memory"
    layers = model.attention.num_layers
    if pp > 1:
        text += f", the busiest pipeline stage's {layers_per_stage(layers, pp)} of {layers} layers"
    if tp > 1:
        text += f", split over TP {tp}"
    return text


def kv_heads_per_rank(attention: AttentionGeometry, tp: int) -> int:
    """KV heads one TP rank stores: heads are split by TP and replicated when TP > kv_heads.

    vLLM: max(1, num_kv_heads // tp) (vllm.md "Memory flags").
    """
    assert attention.num_kv_heads
    return max(1, attention.num_kv_heads // tp)


def kv_bytes_per_token_per_gpu(attention: AttentionGeometry, tp: int, pp: int, dtype_bytes: int) -> int:
    """KV-cache bytes one GPU stores per token of context.

    Standard attention: layers on this stage x 2 (K and V) x KV heads per rank x head_dim x bytes
    (vLLM v1/core/kv_cache_utils.py page size).
    MLA: layers on this stage x (kv_lora_rank + qk_rope_head_dim) x bytes, NOT divided by TP:
    every rank holds the whole latent (presets.md deepseek notes).
    """
    layers = layers_per_stage(attention.num_layers, pp)
    if attention.is_mla:
        assert attention.kv_lora_rank and attention.qk_rope_head_dim
        return layers * (attention.kv_lora_rank + attention.qk_rope_head_dim) * dtype_bytes
    assert attention.head_dim
    return layers * 2 * kv_heads_per_rank(attention, tp) * attention.head_dim * dtype_bytes


def utilization_from_free(gpus: Sequence[GpuInfo]) -> float:
    """The --gpu-memory-utilization the free memory allows on every one of ``gpus``.

    KAITO #1374: (free - 600 MiB) / total, floored to 2 decimals, capped at 0.95; the minimum
    over GPUs, since vLLM checks each rank. May be <= 0 when a GPU is (nearly) full.
    """
    values = [
        math.floor((g.free_bytes - UTILIZATION_HEADROOM) / g.total_bytes * 100) / 100 for g in gpus
    ]
    return min(min(values), UTILIZATION_CAP)


def max_utilization_free(gpu: GpuInfo) -> float:
    """The largest utilization vLLM's start-up check accepts on ``gpu`` (free >= util x total)."""
    return gpu.free_bytes / gpu.total_bytes


# Human figure for messages: '79.6 GiB' (one formatter for the whole launcher).
gib = format_gib


def small_or_gib(n_bytes: float) -> str:
    """``gib`` from 0.1 GiB up; below that the largest fitting unit ('1.0 MiB'), where '0.0 GiB'
    would say nothing (a test model's weights or KV needs)."""
    return gib(n_bytes) if n_bytes >= GiB / 10 else format_bytes(n_bytes)

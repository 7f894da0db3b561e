"""Memory arithmetic: KV bytes per token, weight share, runtime overhead, utilization from free memory."""

from __future__ import annotations

import pytest

from kaito_runtime.plan import memory
from tests.support.planner_helpers import plan_launch
from kaito_runtime.types import PlanOverrides
from tests.support.planner_helpers import A100_80, group, node, preset

def test_standard_kv_is_split_by_tp_and_replicated_beyond_kv_heads():
    att = preset("llama-3.3-70b-instruct").attention  # 8 KV heads
    full = memory.kv_bytes_per_token_per_gpu(att, 1, 1, 2)
    assert memory.kv_bytes_per_token_per_gpu(att, 4, 1, 2) == full // 4
    assert memory.kv_bytes_per_token_per_gpu(att, 8, 1, 2) == full // 8
    # TP 16 > 8 KV heads: one head per rank, not half a head.
    assert memory.kv_bytes_per_token_per_gpu(att, 16, 1, 2) == full // 8
    assert memory.kv_bytes_per_token_per_gpu(att, 1, 2, 2) == full // 2


def test_mla_kv_is_not_divided_by_tp():
    att = preset("deepseek-r1-0528").attention
    assert att.is_mla
    one = memory.kv_bytes_per_token_per_gpu(att, 1, 1, 2)
    assert one == 70272
    assert memory.kv_bytes_per_token_per_gpu(att, 8, 1, 2) == one
    # PP still splits layers: 61 layers over 2 stages -> the busier stage holds 31.
    assert memory.kv_bytes_per_token_per_gpu(att, 8, 2, 2) == 31 * 576 * 2


def test_fp8_kv_cache_halves_bytes():
    assert memory.kv_dtype_bytes("bfloat16", None) == 2
    assert memory.kv_dtype_bytes("bfloat16", "auto") == 2
    assert memory.kv_dtype_bytes("bfloat16", "fp8") == 1
    assert memory.kv_dtype_bytes("float32", None) == 4
    spec = preset("llama-3.1-8b-instruct")
    base = plan_launch(spec, node(1, A100_80), group(1))
    fp8 = plan_launch(spec, node(1, A100_80), group(1), PlanOverrides(kv_cache_dtype="fp8"))
    assert fp8.memory.kv_bytes_per_token * 2 == base.memory.kv_bytes_per_token
    assert fp8.kv_cache_dtype == "fp8" and base.kv_cache_dtype is None
    # vLLM's pool is counted in 16-token blocks: half the bytes per block, twice the blocks
    assert abs(fp8.kv_cache_tokens - 2 * base.kv_cache_tokens) <= 16


def test_cpu_weights_share_uses_kaito_expansion_and_busiest_stage():
    # The CPU planner's RAM figure; the GPU budget is vLLM's own (test_vllm_budget.py).
    spec = preset("llama-3.3-70b-instruct")
    assert memory.weights_share_bytes(spec, 4, 1) == pytest.approx(spec.weights_bytes * 1.02 / 4, abs=1)
    deepseek = preset("deepseek-r1-0528")
    assert memory.weights_share_bytes(deepseek, 8, 2) == pytest.approx(deepseek.weights_bytes * 1.02 * 31 / 61 / 8, abs=1)


def test_utilization_from_free_memory():
    full = node(2, A100_80).gpus
    assert memory.utilization_from_free(full) == 0.95  # capped
    shared = node(2, A100_80, free_gib=40).gpus
    # (40 GiB - 600 MiB) / 80 GiB = 0.4926 -> 0.49
    assert memory.utilization_from_free(shared) == 0.49


def test_weights_basis_names_the_pipeline_stage_share():
    spec = preset("llama-3.3-70b-instruct")  # 80 layers
    assert memory.weights_basis(spec, 2, 3) == (
        "131.4 GiB x 1.02 in memory, the busiest pipeline stage's 27 of 80 layers, split over TP 2"
    )

"""Planner: memory arithmetic, layout choice, utilization, context and CPU plans."""

from __future__ import annotations

import math
import re

import pytest
import yaml

from kaito_runtime import data, memory, skus
from kaito_runtime.catalog import load_catalog
from kaito_runtime.errors import DoesNotFitError, InputError
from kaito_runtime.planner import MIN_CONTEXT, plan_launch
from kaito_runtime.vllm_rules import CONTEXT_ALIGN, tp_rule_violation, valid_tensor_parallel_sizes
from kaito_runtime.values import (
    GiB,
    MiB,
    AttentionGeometry,
    GpuInfo,
    HostInfo,
    ModelSpec,
    NodeInventory,
    PlanOverrides,
    Topology,
)

# NVML-like per-GPU totals (cluster-conventions.md "GPU SKUs").
A10, A100_40, A100_80, H100, H200 = 22.5, 40.0, 80.0, 79.6, 140.0


def node(count: int, total_gib: float, name: str = "NVIDIA GPU", free_gib: float | None = None, **kw) -> NodeInventory:
    total = int(total_gib * GiB)
    free = total if free_gib is None else int(free_gib * GiB)
    gpus = tuple(GpuInfo(i, name, f"GPU-{i}", total, free, (8, 0), **kw) for i in range(count))
    return NodeInventory(gpus, HostInfo(cpu_count=96, ram_total_bytes=900 * GiB, ram_available_bytes=800 * GiB), source="sku")


def cpu_box(ram_available_gib: float) -> NodeInventory:
    host = HostInfo(cpu_count=2, ram_total_bytes=int(24 * GiB), ram_available_bytes=int(ram_available_gib * GiB))
    return NodeInventory((), host, source="none", no_gpu_reason="NVML library not found")


def group(nnodes: int, rank: int = 0) -> Topology:
    return Topology(nnodes=nnodes, node_rank=rank, leader_address="10.0.0.1" if nnodes > 1 else None)


def tiny_model(**kw) -> ModelSpec:
    """The tiny Llama of vllm-cpu.md: 2 layers, 4 heads, 2 KV heads, head_dim 32, 512 context."""
    args = dict(
        name="tiny",
        architecture="LlamaForCausalLM",
        weights_bytes=1_641_920,
        max_context=512,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=32),
    )
    args.update(kw)
    return ModelSpec(**args)


CATALOG = load_catalog()


def preset(name: str) -> ModelSpec:
    return CATALOG.get(name)


# ------------------------------------------------------------------------------------------------
# Memory arithmetic
# ------------------------------------------------------------------------------------------------


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
    assert fp8.kv_cache_tokens in (2 * base.kv_cache_tokens, 2 * base.kv_cache_tokens + 1)


def test_weights_share_uses_kaito_expansion_and_busiest_stage():
    spec = preset("llama-3.3-70b-instruct")
    assert memory.weights_share_bytes(spec, 4, 1) == pytest.approx(spec.weights_bytes * 1.02 / 4, abs=1)
    deepseek = preset("deepseek-r1-0528")
    assert memory.weights_share_bytes(deepseek, 8, 2) == pytest.approx(deepseek.weights_bytes * 1.02 * 31 / 61 / 8, abs=1)


def test_runtime_overhead_grows_with_the_weight_share():
    assert memory.runtime_overhead_bytes(0) == int(2.3 * GiB)
    assert memory.runtime_overhead_bytes(60 * GiB) == int(2.3 * GiB) + 3 * GiB


def test_utilization_from_free_memory():
    full = node(2, A100_80).gpus
    assert memory.utilization_from_free(full) == 0.95  # capped
    shared = node(2, A100_80, free_gib=40).gpus
    # (40 GiB - 600 MiB) / 80 GiB = 0.4926 -> 0.49
    assert memory.utilization_from_free(shared) == 0.49


# ------------------------------------------------------------------------------------------------
# The done-criteria cases
# ------------------------------------------------------------------------------------------------


def test_llama70b_on_one_a100_does_not_fit_and_suggests_layouts_that_do():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("llama-3.3-70b-instruct"), node(1, A100_80, "NVIDIA A100 80GB"), group(1))
    text = str(info.value)
    assert "134.0 GiB of weights" in text  # needed
    assert "offers 76.0 GiB" in text  # available
    assert "2 x NVIDIA A100 80GB (TP 2)" in text
    assert "needs 2 nodes of this SKU" in text
    assert info.value.exit_code == 2


def test_llama70b_on_four_a100_uses_tp4():
    plan = plan_launch(preset("llama-3.3-70b-instruct"), node(4, A100_80), group(1))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size) == (4, 1, 1)
    assert plan.gpu_memory_utilization == 0.95
    assert plan.max_model_len == 131072 and not plan.max_model_len_auto


def test_llama70b_on_two_nodes_of_two_a100_uses_tp2_pp2():
    plan = plan_launch(preset("llama-3.3-70b-instruct"), node(2, A100_80), group(2))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 2)
    assert plan.world_size == 4


def test_deepseek_r1_on_one_h100_node_needs_two_nodes():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("deepseek-r1-0528"), node(8, H100, "NVIDIA H100 80GB HBM3"), group(1))
    text = str(info.value)
    assert "81.8 GiB of weights" in text and "79.6 GiB" in text
    assert "needs 2 nodes of this SKU" in text


def test_deepseek_r1_fits_eight_h200():
    plan = plan_launch(preset("deepseek-r1-0528"), node(8, H200), group(1))
    assert plan.tensor_parallel_size == 8
    assert plan.memory.kv_bytes_per_token == 70272  # MLA: full latent on every rank
    assert plan.max_model_len == 163840


def test_phi3_medium_tp4_rejected_with_the_rule():
    spec = preset("phi-3-medium-4k-instruct")
    assert tp_rule_violation(spec, 4) is not None
    assert tp_rule_violation(spec, 5) is None
    assert valid_tensor_parallel_sizes(spec, 10) == [1, 2, 5, 10]
    with pytest.raises(InputError, match="10 KV heads") as info:
        plan_launch(spec, node(4, A10), group(1), PlanOverrides(tensor_parallel_size=4))
    assert "valid sizes here: 1, 2" in str(info.value)
    # Automatic choice on 4 GPUs: TP 2 x 2 replicas, never TP 4.
    plan = plan_launch(spec, node(4, A10), group(1))
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (2, 2)


def test_falcon7b_never_uses_tp():
    spec = preset("falcon-7b")
    for gpus in (1, 2, 8):
        assert plan_launch(spec, node(gpus, A100_80), group(1)).tensor_parallel_size == 1
    for pref in ("tensor", "replicas"):
        assert plan_launch(spec, node(2, A10), group(1), PlanOverrides(parallel_preference=pref)).tensor_parallel_size == 1
    with pytest.raises(InputError, match="does not support tensor parallelism"):
        plan_launch(spec, node(2, A10), group(1), PlanOverrides(tensor_parallel_size=2))


def test_small_model_on_multi_gpu_node_runs_replicas_unless_tensor_preferred():
    spec = preset("phi-3-mini-128k-instruct")
    plan = plan_launch(spec, node(4, A100_80), group(1))
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (1, 4)
    assert any(d.topic == "layout" and "replica" in d.reason for d in plan.decisions)
    tensor = plan_launch(spec, node(4, A100_80), group(1), PlanOverrides(parallel_preference="tensor"))
    assert (tensor.tensor_parallel_size, tensor.data_parallel_size) == (4, 1)


def test_model_over_half_a_gpu_takes_the_whole_node():
    plan = plan_launch(preset("llama-3.1-8b-instruct"), node(2, A10), group(1))
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (2, 1)


def test_replicas_preference_picks_smallest_tp_that_fits():
    plan = plan_launch(preset("llama-3.3-70b-instruct"), node(8, A100_80), group(1), PlanOverrides(parallel_preference="replicas"))
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (2, 4)


# ------------------------------------------------------------------------------------------------
# A preset's floor on GPU memory (min_gpu_memory_gib)
# ------------------------------------------------------------------------------------------------


def test_min_gpu_memory_refuses_smaller_gpus_with_the_source():
    spec = tiny_model(min_gpu_memory_bytes=30 * GiB, min_gpu_memory_reason="vLLM ran out of memory in test X")
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(spec, node(1, A10, "NVIDIA A10"), group(1))
    text = str(info.value)
    assert "needs GPUs with at least 30.0 GiB each" in text
    assert "GPU 0 (NVIDIA A10) has 22.5 GiB" in text
    assert "min_gpu_memory_gib 30 because vLLM ran out of memory in test X" in text
    assert "Fix:" in text and info.value.exit_code == 2
    # The tiny model would fit many times over: only the floor refuses it.
    assert plan_launch(tiny_model(), node(1, A10), group(1)).target == "gpu"
    assert plan_launch(spec, node(1, A100_40), group(1)).target == "gpu"


def test_min_gpu_memory_checks_the_smallest_gpu_and_not_the_cpu_target():
    spec = tiny_model(min_gpu_memory_bytes=30 * GiB, min_gpu_memory_reason="test")
    big, small = node(1, A100_40).gpus[0], node(1, A10).gpus[0]
    mixed = NodeInventory((big, GpuInfo(1, "NVIDIA A10", "GPU-1", small.total_bytes, small.free_bytes, (8, 6))), big_host())
    with pytest.raises(DoesNotFitError, match="GPU 1 \\(NVIDIA A10\\) has 22.5 GiB"):
        plan_launch(spec, mixed, group(1))
    assert plan_launch(spec, cpu_box(20), group(1)).target == "cpu"


def big_host() -> HostInfo:
    return HostInfo(cpu_count=96, ram_total_bytes=900 * GiB, ram_available_bytes=800 * GiB)


def test_gpt_oss_20b_is_refused_on_a10_skus_and_fits_a100():
    spec = preset("gpt-oss-20b")
    for sku in ("Standard_NV36ads_A10_v5", "Standard_NV72ads_A10_v5"):
        with pytest.raises(DoesNotFitError) as info:
            plan_launch(spec, skus.inventory_for_sku(sku), group(1))
        assert "24 GB A10" in str(info.value) and sku in str(info.value)
    assert plan_launch(spec, skus.inventory_for_sku("Standard_NC24ads_A100_v4"), group(1)).tensor_parallel_size == 1


# ------------------------------------------------------------------------------------------------
# Context length
# ------------------------------------------------------------------------------------------------


def test_user_max_model_len_that_fits_is_kept():
    plan = plan_launch(preset("llama-3.1-8b-instruct"), node(1, A10), group(1), PlanOverrides(max_model_len=16384))
    assert plan.max_model_len == 16384 and not plan.max_model_len_auto


def test_user_max_model_len_too_big_is_refused_with_numbers():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("llama-3.1-8b-instruct"), node(1, A10), group(1), PlanOverrides(max_model_len=131072))
    text = str(info.value)
    assert "16.0 GiB KV for 131,072 tokens" in text
    m = re.search(r"fits with --max-model-len <= (\d+)", text)
    assert m and int(m.group(1)) % CONTEXT_ALIGN == 0 and 2048 <= int(m.group(1)) < 131072
    assert "2 x" in text  # or more GPUs
    # The suggested value really fits.
    plan_launch(preset("llama-3.1-8b-instruct"), node(1, A10), group(1), PlanOverrides(max_model_len=int(m.group(1))))


def test_user_max_model_len_beyond_model_limit_is_input_error():
    with pytest.raises(InputError, match="32768"):
        plan_launch(preset("mistral-7b"), node(1, A100_80), group(1), PlanOverrides(max_model_len=65536))


def test_partial_context_hands_auto_to_vllm_and_keeps_estimate():
    plan = plan_launch(preset("llama-3.1-8b-instruct"), node(1, A10), group(1))
    assert plan.max_model_len_auto and plan.max_model_len is None
    assert MIN_CONTEXT <= plan.kv_cache_tokens < 131072
    decision = next(d for d in plan.decisions if d.topic == "max-model-len")
    assert decision.choice == "auto" and "#2132" in decision.reason


def test_fp8_suggested_when_it_would_fit():
    # 70B on 2 x A100-80 at TP 2 leaves ~3 GiB KV; ask for a context that needs fp8.
    spec = preset("llama-3.3-70b-instruct")
    plan = plan_launch(spec, node(2, A100_80), group(1))
    tokens = plan.kv_cache_tokens
    with pytest.raises(DoesNotFitError, match="--kv-cache-dtype fp8"):
        plan_launch(spec, node(2, A100_80), group(1), PlanOverrides(max_model_len=align(tokens * 1.5)))
    ok = plan_launch(spec, node(2, A100_80), group(1), PlanOverrides(max_model_len=align(tokens * 1.5), kv_cache_dtype="fp8"))
    assert ok.kv_cache_tokens >= align(tokens * 1.5)


def align(x: float) -> int:
    return int(x) // CONTEXT_ALIGN * CONTEXT_ALIGN


# ------------------------------------------------------------------------------------------------
# Utilization and other tenants
# ------------------------------------------------------------------------------------------------


def test_other_tenant_lowers_utilization():
    full = plan_launch(preset("llama-3.1-8b-instruct"), node(1, A100_80), group(1))
    shared = plan_launch(preset("llama-3.1-8b-instruct"), node(1, A100_80, free_gib=50), group(1))
    assert full.gpu_memory_utilization == 0.95
    assert shared.gpu_memory_utilization == 0.61  # (50 GiB - 600 MiB) / 80 GiB
    assert shared.memory.usable <= shared.memory.free - 600 * MiB


def test_user_utilization_above_free_is_refused_with_numbers():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(
            preset("llama-3.1-8b-instruct"), node(1, H100, free_gib=30.1), group(1), PlanOverrides(gpu_memory_utilization=0.9)
        )
    assert "GPU 0 has 30.1 GiB free of 79.6 GiB; --gpu-memory-utilization 0.9 needs 71.6 GiB" in str(info.value)


def test_user_utilization_within_free_is_kept():
    plan = plan_launch(preset("llama-3.1-8b-instruct"), node(1, A100_80), group(1), PlanOverrides(gpu_memory_utilization=0.8))
    assert plan.gpu_memory_utilization == 0.8


def test_full_gpu_is_reported():
    with pytest.raises(DoesNotFitError, match="no memory to spare"):
        plan_launch(preset("phi-4-mini-instruct"), node(1, A10, free_gib=0.3), group(1))


# ------------------------------------------------------------------------------------------------
# Multi-node rules
# ------------------------------------------------------------------------------------------------


def test_single_node_preset_refuses_multi_node_group():
    with pytest.raises(InputError, match="single-node"):
        plan_launch(preset("phi-4"), node(8, H100), group(2))


def test_multi_node_user_tp_pp_must_cover_the_group():
    spec = preset("llama-3.3-70b-instruct")
    with pytest.raises(InputError, match="TP x PP = GPUs per node x nodes"):
        plan_launch(spec, node(2, A100_80), group(2), PlanOverrides(tensor_parallel_size=2, pipeline_parallel_size=1))
    with pytest.raises(InputError, match="spans nodes"):
        plan_launch(spec, node(2, A100_80), group(2), PlanOverrides(tensor_parallel_size=4))
    across = plan_launch(spec, node(2, A100_80), group(2), PlanOverrides(tensor_parallel_across_nodes=True))
    assert (across.tensor_parallel_size, across.pipeline_parallel_size) == (4, 1)


def test_worker_rank_plans_the_same_layout():
    spec = preset("llama-3.3-70b-instruct")
    leader = plan_launch(spec, node(2, A100_80), group(2, 0))
    worker = plan_launch(spec, node(2, A100_80), group(2, 1))
    assert (leader.tensor_parallel_size, leader.pipeline_parallel_size, leader.max_model_len) == (
        worker.tensor_parallel_size, worker.pipeline_parallel_size, worker.max_model_len)


def test_mig_slices_use_one_device():
    plan = plan_launch(preset("phi-4-mini-instruct"), node(2, A10, mig=True), group(1))
    assert (plan.tensor_parallel_size, plan.data_parallel_size) == (1, 1)


# ------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------


def test_cpu_plan_for_tiny_model():
    plan = plan_launch(tiny_model(), cpu_box(20), group(1))
    assert plan.target == "cpu"
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 1)
    assert plan.cpu_kv_cache_gib == 1
    assert plan.kv_cache_tokens == 2_097_152  # vllm-cpu.md: 1 GiB held 2,097,152 tokens
    assert plan.max_model_len == 512
    assert plan.enforce_eager and plan.cpu_threads_bind == "auto"
    assert plan.gpu_memory_utilization is None and plan.memory is None
    assert "NVML library not found" in next(d.reason for d in plan.decisions if d.topic == "target")


def test_cpu_forced_on_gpu_node():
    plan = plan_launch(tiny_model(), node(1, A10), group(1), PlanOverrides(force_cpu=True))
    assert plan.target == "cpu"


def test_cpu_kv_space_sized_for_concurrency_and_bounded_by_ram():
    spec = preset("phi-4-mini-instruct")  # 7.15 GiB, 128 KiB per token
    small = plan_launch(spec, cpu_box(16), group(1))
    # 16 - 7.3 weights - 3.3 runtime - 1 headroom = 4.4 -> 4 GiB
    assert small.cpu_kv_cache_gib == 4
    assert small.max_model_len == 32768  # 4 GiB / 128 KiB per token
    big = plan_launch(spec, cpu_box(500), group(1))
    assert big.cpu_kv_cache_gib == 64  # 4 x 131072 tokens x 128 KiB
    assert big.max_model_len == 131072


def test_cpu_does_not_fit_reports_ram_numbers():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("llama-3.1-8b-instruct"), cpu_box(12), group(1))
    assert "15.3 GiB of weights" in str(info.value) and "12.0 GiB RAM is available" in str(info.value)


def test_cpu_rejects_multi_node_a_bad_tp_and_small_head_dim():
    with pytest.raises(InputError, match="Multi-node"):
        plan_launch(tiny_model(), cpu_box(20), group(2))
    with pytest.raises(InputError, match="does not divide the 4 attention heads") as info:
        plan_launch(tiny_model(), cpu_box(20), group(1), PlanOverrides(tensor_parallel_size=3))
    assert "valid sizes up to 3: 1, 2" in str(info.value)
    odd = tiny_model(attention=AttentionGeometry(num_layers=2, num_attention_heads=8, num_kv_heads=2, head_dim=16))
    with pytest.raises(InputError, match="head_dim 16"):
        plan_launch(odd, cpu_box(20), group(1))


def decision(plan, topic: str):
    return next(d for d in plan.decisions if d.topic == topic)


def test_cpu_kv_line_for_a_tiny_model_says_it_is_the_whole_gib_minimum():
    plan = plan_launch(tiny_model(), cpu_box(22.5), group(1))
    kv = decision(plan, "cpu-kv-cache")
    assert kv.choice == "1 GiB" and plan.kv_cache_tokens == 2_097_152
    # one story: what it was sized for, that the unit is whole GiB, what it holds, what RAM allows
    assert kv.reason.startswith(
        "enough for 4 x 512-token sequences (1.0 MiB at 512 bytes per token), in whole GiB; "
        "room for ~2,097,152 tokens; the RAM left would allow 18 GiB (22.5 GiB RAM available - "
        "weights 1.6 MiB - runtime 3.3 GiB - headroom 1.0 GiB)"
    )
    assert "0.0 GiB" not in kv.reason and "at most" not in kv.reason


def test_cpu_kv_line_when_ram_caps_it():
    plan = plan_launch(preset("phi-4-mini-instruct"), cpu_box(22.5), group(1))
    kv = decision(plan, "cpu-kv-cache")
    assert kv.choice == "10 GiB" and plan.kv_cache_tokens == 10 * GiB // 131072  # 22.5 - 7.3 - 3.3 - 1.0 = 10.9
    assert kv.reason.startswith("all the RAM left, in whole GiB (22.5 GiB RAM available - weights 7.3 GiB")
    assert kv.reason.endswith(
        f"room for ~{plan.kv_cache_tokens:,} tokens, less than 4 x 131,072-token sequences "
        "(64.0 GiB at 131,072 bytes per token)"
    )


def test_no_fit_errors_trace_the_weights_to_the_preset_figure():
    spec = preset("llama-3.3-70b-instruct")
    listed = memory.gib(spec.weights_bytes)  # what the Model line shows
    assert listed == "131.4 GiB"
    with pytest.raises(DoesNotFitError) as cpu:
        plan_launch(spec, cpu_box(22.5), group(1))
    assert "It needs 134.0 GiB of weights (131.4 GiB x 1.02 in memory) + " in str(cpu.value)
    with pytest.raises(DoesNotFitError) as gpu:
        plan_launch(spec, node(1, A100_80, "NVIDIA A100 80GB"), group(1))
    assert "each GPU needs 134.0 GiB of weights (131.4 GiB x 1.02 in memory) + " in str(gpu.value)
    with pytest.raises(DoesNotFitError) as split:
        plan_launch(spec, node(2, A10, "NVIDIA A10"), group(1))
    assert "(131.4 GiB x 1.02 in memory, split over TP 2) + " in str(split.value)


def test_weights_basis_names_the_pipeline_stage_share():
    spec = preset("llama-3.3-70b-instruct")  # 80 layers
    assert memory.weights_basis(spec, 2, 3) == (
        "131.4 GiB x 1.02 in memory, the busiest pipeline stage's 27 of 80 layers, split over TP 2"
    )


def test_single_node_model_says_why_more_nodes_do_not_help_not_as_a_fix():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("phi-4"), node(1, A10, "NVIDIA A10"), group(1))
    err = info.value
    assert "More nodes do not help: phi-4 is single-node (multi_node: false)" in err.why
    assert "single-node" not in err.fix


def test_cpu_tp_sizes_the_kv_space_per_rank():
    spec = preset("phi-4-mini-instruct")  # 128 KiB per token in one process, 64 KiB per TP-2 rank
    one = plan_launch(spec, cpu_box(500), group(1))
    two = plan_launch(spec, cpu_box(500), group(1), PlanOverrides(tensor_parallel_size=2))
    assert (two.tensor_parallel_size, two.pipeline_parallel_size, two.world_size) == (2, 1, 2)
    assert two.cpu_kv_cache_gib == one.cpu_kv_cache_gib // 2 == 32  # each rank allocates its own
    assert two.kv_cache_tokens == one.kv_cache_tokens  # the same tokens, half the heads per rank
    assert two.enforce_eager  # TP works eager (vllm-cpu.md)
    assert decision(two, "layout").choice == "TP 2, 2 processes"
    kv = decision(two, "cpu-kv-cache")
    assert kv.choice == "32 GiB per rank"
    assert "runtime 2 x 3.3 GiB" in kv.reason and "/ 2 ranks" in kv.reason
    assert "VLLM_CPU_KVCACHE_SPACE in every rank" in kv.reason


def test_cpu_ram_is_checked_for_every_rank():
    spec = preset("phi-4-mini-instruct")
    assert plan_launch(spec, cpu_box(16), group(1)).cpu_kv_cache_gib == 4  # one process fits
    # 16 - 7.3 weights - 2 x 3.3 runtime - 1 headroom = 1.1 GiB for 2 ranks: < 1 GiB each
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(spec, cpu_box(16), group(1), PlanOverrides(tensor_parallel_size=2))
    text = str(info.value)
    assert "as 2 CPU ranks" in text and "2 x 3.3 GiB runtime" in text and "2 x 1 GiB KV" in text
    assert "fewer ranks need less RAM" in text


def test_cpu_pipeline_parallel_runs_compiled():
    plan = plan_launch(tiny_model(), cpu_box(20), group(1), PlanOverrides(pipeline_parallel_size=2))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (1, 2)
    assert not plan.enforce_eager
    assert decision(plan, "enforce-eager").choice == "off" and "compiled mode" in decision(plan, "enforce-eager").reason
    assert decision(plan, "layout").choice == "TP 1 x PP 2, 2 processes"


# ------------------------------------------------------------------------------------------------
# Every shipped preset on every hardware shape: invariants
# ------------------------------------------------------------------------------------------------

HARDWARE = {
    "1xA10": (1, A10),
    "2xA10": (2, A10),
    "8xA100-40GB": (8, A100_40),
    "1xA100-80GB": (1, A100_80),
    "2xA100-80GB": (2, A100_80),
    "4xA100-80GB": (4, A100_80),
    "8xA100-80GB": (8, A100_80),
    "8xH100": (8, H100),
    "8xH200": (8, H200),
}


def _raw_presets() -> dict[str, dict]:
    """The preset entries as written in presets/*.yaml, read without the catalog code."""
    entries: dict[str, dict] = {}
    for path in sorted(data.presets_dir().glob("*.yaml")):
        for entry in yaml.safe_load(path.read_text(encoding="utf-8"))["presets"]:
            entries[entry["name"]] = entry
    return entries


RAW = _raw_presets()


def expected_kv_per_gpu(raw: dict, tp: int, pp: int) -> int:
    """KV bytes per token on one GPU at 16-bit KV, from the YAML figures: the busiest stage's
    layers x 2 (K, V) x KV heads per rank (at least 1) x head_dim x 2 bytes; MLA: the whole latent
    (kv_lora_rank + qk_rope_head_dim) on every TP rank."""
    att = raw["attention"]
    stage_layers = -(-att["num_layers"] // pp)
    if "kv_lora_rank" in att:
        return stage_layers * (att["kv_lora_rank"] + att["qk_rope_head_dim"]) * 2
    return stage_layers * 2 * max(1, att["num_kv_heads"] // tp) * att["head_dim"] * 2


@pytest.mark.parametrize("nnodes", [1, 2, 4])
@pytest.mark.parametrize("hw", list(HARDWARE))
@pytest.mark.parametrize("name", CATALOG.names())
def test_invariants_for_every_preset(name: str, hw: str, nnodes: int):
    spec = preset(name)
    raw = RAW[name]
    count, total = HARDWARE[hw]
    try:
        plan = plan_launch(spec, node(count, total), group(nnodes))
    except DoesNotFitError as exc:
        text = str(exc)
        if raw.get("min_gpu_memory_gib", 0) > total:
            assert "min_gpu_memory_gib" in text and raw["min_gpu_memory_reason"] in text
            return
        assert re.search(r"needs [\d.]+ GiB of weights", text) or "GiB of weights" in text
        assert "offers" in text and "Fix:" in text
        return
    except InputError as exc:
        assert nnodes > 1 and not raw.get("multi_node", False), str(exc)
        return
    assert total >= raw.get("min_gpu_memory_gib", 0)
    att = spec.attention
    tp, pp, dp = plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size
    assert tp_rule_violation(spec, tp) is None
    assert raw["attention"]["num_attention_heads"] % tp == 0
    kv_heads = raw["attention"].get("num_kv_heads")
    assert kv_heads is None or kv_heads % tp == 0 or tp % kv_heads == 0
    if not raw.get("tensor_parallel", True):
        assert tp == 1
    assert tp * pp * dp <= count * nnodes
    if nnodes > 1:
        assert tp * pp == count * nnodes and dp == 1
    assert pp <= att.num_layers
    mem = plan.memory
    # Each part of the budget recomputed from the YAML figures and the layout, not read back.
    assert mem.total == int(total * GiB)
    assert mem.usable == pytest.approx(mem.total * plan.gpu_memory_utilization, abs=1)
    layers = raw["attention"]["num_layers"]
    weights = raw["weights_gib"] * GiB * 1.02  # KAITO: runtime copy ~2 % over the files
    even_share = weights / (tp * pp)
    assert even_share - 2 <= mem.weights <= weights * math.ceil(layers / pp) / layers / tp + 2
    if layers % pp == 0:
        assert mem.weights == pytest.approx(even_share, abs=2)
    assert mem.overhead == pytest.approx(2.3 * GiB + 0.05 * mem.weights, abs=2)
    kv_per_gpu = expected_kv_per_gpu(raw, tp, pp)
    assert mem.kv_bytes_per_token == kv_per_gpu
    kv_budget = mem.usable - mem.weights - mem.overhead
    assert mem.kv_cache == kv_budget
    assert plan.kv_cache_tokens == kv_budget // kv_per_gpu
    assert mem.usable <= mem.total * memory.UTILIZATION_CAP + 1
    assert mem.kv_cache >= min(MIN_CONTEXT, spec.max_context) * mem.kv_bytes_per_token
    assert 0 < plan.gpu_memory_utilization <= 0.95
    if plan.max_model_len_auto:
        assert plan.max_model_len is None and plan.kv_cache_tokens >= MIN_CONTEXT
    else:
        assert plan.max_model_len == spec.max_context
        assert mem.weights + mem.overhead + plan.max_model_len * mem.kv_bytes_per_token <= mem.usable
    assert len({d.topic for d in plan.decisions}) == len(plan.decisions)


def test_every_preset_fits_some_shipped_hardware():
    for spec in CATALOG:
        fits = []
        for count, total in HARDWARE.values():
            for nnodes in (1, 2):
                try:
                    plan_launch(spec, node(count, total), group(nnodes))
                    fits.append((count, total, nnodes))
                except (DoesNotFitError, InputError):
                    pass
        assert fits, spec.name


def test_planning_is_fast():
    import time

    spec = preset("llama-3.3-70b-instruct")
    inv = node(8, H100)
    start = time.perf_counter()
    for _ in range(200):
        plan_launch(spec, inv, group(1))
    assert (time.perf_counter() - start) / 200 < 0.005


# ------------------------------------------------------------------------------------------------
# Real SKUs from the shipped GPU table
# ------------------------------------------------------------------------------------------------

def test_llama70b_on_real_azure_skus():
    spec = preset("llama-3.3-70b-instruct")
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(spec, skus.inventory_for_sku("Standard_NC24ads_A100_v4"), group(1))
    assert "needs 2 nodes of this SKU" in str(info.value)
    assert "Standard_NC24ads_A100_v4" in str(info.value)
    four = plan_launch(spec, skus.inventory_for_sku("Standard_NC96ads_A100_v4"), group(1))
    assert four.tensor_parallel_size == 4
    two_nodes = plan_launch(spec, skus.inventory_for_sku("Standard_NC48ads_A100_v4"), group(2))
    assert (two_nodes.tensor_parallel_size, two_nodes.pipeline_parallel_size) == (2, 2)
    assumed = plan_launch(spec, skus.inventory_for_assumed_gpus("4xA100-80GB"), group(1))
    assert assumed.tensor_parallel_size == 4


def test_deepseek_on_real_h100_and_h200_skus():
    spec = preset("deepseek-r1-0528")
    with pytest.raises(DoesNotFitError, match="needs 2 nodes of this SKU"):
        plan_launch(spec, skus.inventory_for_sku("Standard_ND96isr_H100_v5"), group(1))
    assert plan_launch(spec, skus.inventory_for_sku("Standard_ND96isr_H100_v5"), group(2)).pipeline_parallel_size == 2
    assert plan_launch(spec, skus.inventory_for_sku("Standard_ND96isr_H200_v5"), group(1)).tensor_parallel_size == 8


@pytest.mark.parametrize("sku", [m.name for m in skus.load_sku_table().machines])
def test_every_preset_on_every_shipped_sku_plans_or_explains(sku: str):
    inv = skus.inventory_for_sku(sku)
    for spec in CATALOG:
        for nnodes in (1, 2):
            try:
                plan = plan_launch(spec, inv, group(nnodes))
            except DoesNotFitError as exc:
                assert "GiB" in str(exc) and "Fix:" in str(exc), (spec.name, sku)
                continue
            except InputError:
                assert nnodes > 1 and not spec.multi_node, (spec.name, sku)
                continue
            if plan.target == "cpu":
                continue
            mem = plan.memory
            assert mem.weights + mem.overhead + min(MIN_CONTEXT, spec.max_context) * mem.kv_bytes_per_token <= mem.usable
            assert tp_rule_violation(spec, plan.tensor_parallel_size) is None

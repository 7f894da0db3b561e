"""Planner: GPU layout choice, utilization, context, not-fit errors and every preset on every shape.

Memory arithmetic is in test_memory.py, CPU plans in test_cpu.py."""

from __future__ import annotations

import math
import re

import pytest
import yaml

import kaito_runtime.settings as data

from kaito_runtime.plan import memory

from tests.support.steps import skus
from kaito_runtime.errors import DoesNotFitError, InputError
from kaito_runtime.plan import MIN_CONTEXT
from tests.support.planner_helpers import plan_launch
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, tp_rule_violation, valid_tensor_parallel_sizes
from kaito_runtime.types import GiB, MiB, GpuInfo, HostInfo, NodeInventory, PlanOverrides
from tests.support.planner_helpers import (
    A10,
    A100_40,
    A100_80,
    CATALOG,
    H100,
    H200,
    cpu_box,
    decision,
    group,
    PROFILE,
    node,
    preset,
    tiny_model,
)


# ------------------------------------------------------------------------------------------------
# The done-criteria cases
# ------------------------------------------------------------------------------------------------


def test_llama70b_on_one_a100_does_not_fit_and_suggests_layouts_that_do():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("llama-3.3-70b-instruct"), node(1, A100_80, "NVIDIA A100 80GB"), group(1))
    text = str(info.value)
    # vLLM's budget: the checkpoint's 131.4 GiB + buffers, against 0.95 x the CUDA total
    # (NVML's 80 GiB x 0.986 for a GPU the table does not name), not 1.02 x weights vs NVML x 0.95
    assert "131.5 GiB of weights (131.4 GiB checkpoint, + vLLM's buffers)" in text  # needed
    assert "offers 74.9 GiB (78.9 GiB CUDA total x 0.95" in text  # available
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
    assert "80.2 GiB of weights (641.3 GiB checkpoint, split over TP 8" in text and "79.6 GiB" in text
    assert "offers 75.2 GiB (79.2 GiB CUDA total x 0.95" in text  # H100's CUDA total from the table
    assert "DeepseekV3ForCausalLM has no calibration observation, so 1.0 GiB per GPU is held back" in text
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
    assert decision.choice == "auto" and "vLLM 0.32 fits the real value after profiling" in decision.reason
    assert plan.context_limit == plan.kv_cache_tokens // CONTEXT_ALIGN * CONTEXT_ALIGN


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
# Not-fit messages
# ------------------------------------------------------------------------------------------------


def test_no_fit_errors_trace_the_weights_to_the_preset_figure():
    spec = preset("llama-3.3-70b-instruct")
    listed = memory.gib(spec.weights_bytes)  # what the Model line shows
    assert listed == "131.4 GiB"
    with pytest.raises(DoesNotFitError) as cpu:
        plan_launch(spec, cpu_box(22.5), group(1))
    assert "It needs 134.0 GiB of weights (131.4 GiB x 1.02 in memory) + " in str(cpu.value)
    with pytest.raises(DoesNotFitError) as gpu:
        plan_launch(spec, node(1, A100_80, "NVIDIA A100 80GB"), group(1))
    assert "each GPU needs 131.5 GiB of weights (131.4 GiB checkpoint, + vLLM's buffers) + " in str(gpu.value)
    with pytest.raises(DoesNotFitError) as split:
        plan_launch(spec, node(2, A10, "NVIDIA A10"), group(1))
    assert "(131.4 GiB checkpoint, split over TP 2, + vLLM's buffers) + " in str(split.value)


def test_single_node_model_says_why_more_nodes_do_not_help_not_as_a_fix():
    with pytest.raises(DoesNotFitError) as info:
        plan_launch(preset("phi-4"), node(1, A10, "NVIDIA A10"), group(1))
    err = info.value
    assert "More nodes do not help: phi-4 is single-node (multi_node: false)" in err.why
    assert "single-node" not in err.fix


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


def expected_kv_per_gpu(raw: dict, tp: int, pp: int, busiest: bool = True) -> int:
    """KV bytes per token on one GPU at 16-bit KV, from the YAML figures: the busiest (or the
    least busy) stage's layers x 2 (K, V) x KV heads per rank (at least 1) x head_dim x 2 bytes;
    MLA: the whole latent (kv_lora_rank + qk_rope_head_dim) on every TP rank."""
    att = raw["attention"]
    stage_layers = -(-att["num_layers"] // pp) if busiest else att["num_layers"] // pp
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
    # Each part of vLLM's budget recomputed from the YAML figures, the layout and the profile's
    # figures, not read back from the budget code.
    assert mem.total == int(total * GiB)
    assert mem.cuda_total == int(total * GiB * PROFILE.cuda_memory_fallback_ratio)  # "NVIDIA GPU": no table row
    assert mem.usable == math.ceil(mem.cuda_total * plan.gpu_memory_utilization)
    layers = raw["attention"]["num_layers"]
    checkpoint = raw["weights_gib"] * GiB
    extra = PROFILE.weights_extra * GiB
    replicated = PROFILE.multimodal_replicated_fraction * checkpoint if raw.get("multimodal") else 0
    if pp == 1:
        assert mem.weights == pytest.approx(checkpoint / tp + extra, abs=2 + replicated)
    else:  # the limiting stage's layers, plus the embedding or LM head it holds
        ends = 2 * raw.get("vocab_size", 0) * raw.get("hidden_size", 0) * 2
        assert checkpoint * (layers // pp) / layers / tp - ends <= mem.weights <= (
            checkpoint * math.ceil(layers / pp) / layers + ends) / tp + extra + replicated + 2
    nccl = PROFILE.non_torch_tensor_parallel if tp > 1 else PROFILE.non_torch_pipeline_parallel if pp > 1 else PROFILE.non_torch_single_gpu
    assert mem.non_torch == int(nccl * GiB)
    calibrated = raw["architecture"] in PROFILE.calibrated_architectures
    assert mem.margin == (0 if calibrated else int(PROFILE.uncalibrated_margin * GiB))
    assert (mem.cudagraph > 0) == PROFILE.cudagraph_estimate_in_budget and mem.activation > 0
    assert mem.overhead == mem.non_torch + mem.activation + mem.cudagraph + mem.margin
    assert mem.kv_bytes_per_token in (expected_kv_per_gpu(raw, tp, pp), expected_kv_per_gpu(raw, tp, pp, busiest=False))
    assert mem.kv_cache == mem.usable - mem.weights - mem.overhead
    kv_per_gpu = mem.kv_bytes_per_token
    sliding = raw.get("sliding_window_layers", 0)
    if not sliding:  # a pool of 16-token blocks of all the stage's layers
        assert plan.kv_cache_tokens <= mem.kv_cache // kv_per_gpu
        assert plan.kv_cache_tokens >= 0.99 * (mem.kv_cache // kv_per_gpu) - 16
        assert mem.kv_cache >= min(MIN_CONTEXT, spec.max_context) * kv_per_gpu
    assert plan.context_limit >= min(MIN_CONTEXT, spec.max_context) and plan.context_limit % CONTEXT_ALIGN == 0
    assert 0 < plan.gpu_memory_utilization <= 0.95
    if plan.max_model_len_auto:
        assert plan.max_model_len is None and plan.kv_cache_tokens >= MIN_CONTEXT
        assert plan.context_limit <= spec.max_context  # it may fit, but not within the margin
    else:
        assert plan.max_model_len == spec.max_context <= plan.context_limit
        if not sliding:  # the full context within (1 - full_context_margin) of the KV predicted
            assert plan.max_model_len * kv_per_gpu <= (1 - PROFILE.full_context_margin) * mem.kv_cache
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

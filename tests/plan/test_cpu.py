"""CPU plans: ranks, the KV space sized from the RAM left, context, eager vs compiled, RAM errors."""

from __future__ import annotations

import pytest

from kaito_runtime.errors import DoesNotFitError, InputError
from tests.support.planner_helpers import plan_launch
from kaito_runtime.types import GiB, AttentionGeometry, PlanOverrides
from tests.support.planner_helpers import A10, cpu_box, decision, group, node, preset, tiny_model

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


def test_cpu_multi_node_is_tp_across_nodes_one_rank_per_node_with_its_own_cores():
    plan = plan_launch(tiny_model(), cpu_box(20), group(2, 1), PlanOverrides(cpu_cores="1"))
    assert (plan.tensor_parallel_size, plan.pipeline_parallel_size) == (2, 1)
    assert plan.enforce_eager and plan.cpu_threads_bind == "1" and plan.cpu_cores == (1,)
    assert "across 2 nodes, 1 rank(s) per node" in decision(plan, "layout").choice
    piped = plan_launch(tiny_model(), cpu_box(20), group(2), PlanOverrides(pipeline_parallel_size=2))
    assert (piped.tensor_parallel_size, piped.pipeline_parallel_size, piped.enforce_eager) == (1, 2, False)
    with pytest.raises(InputError, match="cannot be split evenly over 2 nodes"):
        plan_launch(tiny_model(), cpu_box(20), group(2), PlanOverrides(tensor_parallel_size=1))


def test_cpu_cores_are_checked_and_given_to_vllm_in_its_list_form():
    from kaito_runtime.plan.cpu import cores_text, cpu_core_list

    assert cpu_core_list("0-2, 5") == (0, 1, 2, 5) and cores_text((5, 0, 1, 2)) == "0-2,5"
    assert plan_launch(tiny_model(), cpu_box(20), group(1), PlanOverrides(cpu_cores="0-1")).cpu_threads_bind == "0-1"
    with pytest.raises(InputError, match="--cpu-cores 'a-b' is not a core list"):
        plan_launch(tiny_model(), cpu_box(20), group(1), PlanOverrides(cpu_cores="a-b"))


def test_cpu_rejects_a_bad_tp_and_small_head_dim():
    with pytest.raises(InputError, match="does not divide the 4 attention heads") as info:
        plan_launch(tiny_model(), cpu_box(20), group(1), PlanOverrides(tensor_parallel_size=3))
    assert "valid sizes up to 3: 1, 2" in str(info.value)
    odd = tiny_model(attention=AttentionGeometry(num_layers=2, num_attention_heads=8, num_kv_heads=2, head_dim=16))
    with pytest.raises(InputError, match="head_dim 16"):
        plan_launch(odd, cpu_box(20), group(1))


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

"""CPU rank layout: core lists per rank, KV space per rank, what goes when there is more than one rank."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from kaito_runtime.launch.cpu_ranks import cpu_bind_lists, kv_gib_per_rank, layout_cpu, local_ranks
from kaito_runtime.types import AttentionGeometry, LaunchPlan, ModelSpec, Topology


@dataclass(frozen=True)
class Arg:
    name: str | None
    values: tuple[str, ...] = ()


def plan(tp: int = 1, pp: int = 1, kv: int | None = 8) -> LaunchPlan:
    model = ModelSpec(
        name="m", architecture="LlamaForCausalLM", weights_bytes=1, max_context=4096,
        attention=AttentionGeometry(num_layers=4, num_attention_heads=4, num_kv_heads=2, head_dim=32),
    )
    return LaunchPlan(
        model=model, target="cpu", topology=Topology(), tensor_parallel_size=tp, pipeline_parallel_size=pp,
        cpu_kv_cache_gib=kv, cpu_threads_bind="auto", enforce_eager=pp == 1,
    )


@pytest.mark.parametrize(
    ("cpus", "ranks", "expected"),
    [
        ([0, 1], 2, "0|1"),
        (range(8), 2, "0-3|4-7"),
        ([0, 1, 2, 3, 4], 2, "0-2|3-4"),
        ([0, 2, 4, 6], 2, "0,2|4,6"),
        ([5, 3, 4], 1, "3-5"),
        ([0], 2, "0|0"),
        ([], 1, "0"),
    ],
)
def test_cpu_bind_lists(cpus, ranks, expected):
    assert cpu_bind_lists(cpus, ranks) == expected


def test_local_ranks():
    assert local_ranks(2, 2, 1) == 4
    assert local_ranks(2, 2, 1, nnodes=2) == 2
    assert local_ranks(1, 1, 3) == 3
    assert local_ranks(1, 1, 1, nnodes=4) == 1


@pytest.mark.parametrize(
    ("tp", "pp", "kv", "ranks", "expected"),
    [
        (1, 1, 8, 1, 8),  # as planned
        (2, 1, 8, 2, 8),  # planned per rank already
        (1, 1, 8, 2, 4),  # pass-through TP 2: the one-process value shared out
        (1, 1, 8, 3, 2),  # floored
        (1, 1, 1, 2, 1),  # never below vLLM's 1 GiB unit
        (2, 1, 8, 1, 16),  # fewer ranks than planned get the whole planned space
        (1, 1, None, 1, 1),
    ],
)
def test_kv_gib_per_rank(tp, pp, kv, ranks, expected):
    assert kv_gib_per_rank(plan(tp, pp, kv), ranks) == expected


def test_one_rank_keeps_the_plan():
    args = [Arg("distributed-executor-backend", ("uni",)), Arg("enforce-eager")]
    kept, layout, warnings = layout_cpu(
        plan(), args, tp=1, pp=1, dp=1, is_user=lambda a: False, cpu_ids=[0, 1], base_env={},
        kv_set_by_user=False,
    )
    assert kept == args and warnings == []
    assert (layout.ranks, layout.single_process, layout.threads_bind, layout.kv_cache_gib) == (1, True, "auto", 8)


def test_planned_pp_ranks_bind_per_rank_silently():
    kept, layout, warnings = layout_cpu(
        plan(1, 2), [Arg("max-num-seqs", ("2",))], tp=1, pp=2, dp=1, is_user=lambda a: False,
        cpu_ids=range(4), base_env={}, kv_set_by_user=False,
    )
    assert warnings == []
    assert (layout.ranks, layout.single_process, layout.threads_bind, layout.kv_cache_gib) == (2, False, "0-1|2-3", 8)


def test_pass_through_pp_drops_the_plans_eager_and_uni_and_says_so():
    planned = [Arg("distributed-executor-backend", ("uni",)), Arg("enforce-eager")]
    kept, layout, warnings = layout_cpu(
        plan(), planned, tp=1, pp=2, dp=1, is_user=lambda a: False, cpu_ids=[0, 1], base_env={},
        kv_set_by_user=False,
    )
    assert kept == []
    kv, relayout = warnings
    assert "VLLM_CPU_KVCACHE_SPACE=4 GiB per rank" in kv and "2 x 4 = 8 GiB" in kv
    assert "dropped --distributed-executor-backend uni (single process), --enforce-eager" in relayout
    assert layout.kv_cache_gib == 4


def test_users_kv_choice_gets_no_kv_warning():
    _, _, warnings = layout_cpu(
        plan(), [], tp=2, pp=1, dp=1, is_user=lambda a: True, cpu_ids=[0, 1], base_env={},
        kv_set_by_user=True,
    )
    assert not any("VLLM_CPU_KVCACHE_SPACE" in w for w in warnings)

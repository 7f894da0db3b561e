"""CPU target: how many vLLM ranks run on this machine, their core lists and their KV space.

vLLM's CPU backend runs one rank as one process (engine core inside the API server, ``uni``
executor: the fastest start, vllm-cpu.md). More ranks (TP / PP / DP, planned or asked for in the
config file or after ``--``) need the ``mp`` executor, one core list per rank in
``VLLM_CPU_OMP_THREADS_BIND`` ('auto' binds one rank per NUMA node and fails on a one-node
machine), and compiled mode for PP. Every rank allocates ``VLLM_CPU_KVCACHE_SPACE`` GiB of its own,
so the planned KV space is per rank: when the arguments change the rank count, the plan's total
is shared out again and the user is told the numbers.

Pure: reads the plan and the merged arguments, never the machine (the caller passes the cores).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from kaito_runtime.plan.cpu import cores_text
from kaito_runtime.plan.memory import CPU_RUNTIME_OVERHEAD, gib
from kaito_runtime.types import LaunchPlan


@dataclass(frozen=True)
class CpuLayout:
    ranks: int  # vLLM ranks on this machine
    single_process: bool  # engine core in the API server (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    threads_bind: str  # VLLM_CPU_OMP_THREADS_BIND
    kv_cache_gib: int  # VLLM_CPU_KVCACHE_SPACE, allocated by each rank


class FlagArg(Protocol):
    """One flag with its values, as the command builder groups them."""

    @property
    def name(self) -> str | None: ...

    @property
    def values(self) -> tuple[str, ...]: ...


A = TypeVar("A", bound=FlagArg)


def local_ranks(tp: int, pp: int, dp: int, nnodes: int = 1) -> int:
    """vLLM ranks on one node: the TP x PP world split over the nodes, times the replicas."""
    return max(1, tp * pp // max(1, nnodes)) * max(1, dp)


def cpu_bind_lists(cpu_ids: Sequence[int], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``ranks`` local ranks: the cores split into contiguous,
    near-equal lists joined by '|' ('0|1' for 2 cores and 2 ranks, '0-3|4-7' for 8 and 2).
    With fewer cores than ranks, ranks share cores round-robin."""
    ids = sorted(set(cpu_ids)) or [0]
    if len(ids) < ranks:
        return "|".join(str(ids[i % len(ids)]) for i in range(ranks))
    size, extra = divmod(len(ids), ranks)
    lists, start = [], 0
    for rank in range(ranks):
        end = start + size + (1 if rank < extra else 0)
        lists.append(cores_text(ids[start:end]))
        start = end
    return "|".join(lists)


def usable_cpus() -> list[int]:
    """The cores this process may run on (its affinity, where the OS tells)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def kv_gib_per_rank(plan: LaunchPlan, ranks: int) -> int:
    """VLLM_CPU_KVCACHE_SPACE for ``ranks`` ranks: the plan's per-rank value when the rank count is
    the planned one, else the plan's total shared out (at least 1 GiB, vLLM's unit)."""
    planned_ranks = local_ranks(
        plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size, plan.topology.nnodes
    )
    per_rank = plan.cpu_kv_cache_gib or 1
    if ranks == planned_ranks:
        return per_rank
    return max(1, per_rank * planned_ranks // ranks)


def layout_cpu(
    plan: LaunchPlan,
    args: list[A],
    *,
    tp: int,
    pp: int,
    dp: int,
    is_user: Callable[[A], bool],
    cpu_ids: Sequence[int] | None,
    base_env: Mapping[str, str],
    kv_set_by_user: bool,
) -> tuple[list[A], CpuLayout, list[str]]:
    """Fit the merged CPU arguments to the world size they ask for (TP ``tp`` x PP ``pp`` x DP ``dp``).

    One rank: the plan's single-process settings stay. More: the plan's ``--distributed-executor-
    backend uni`` goes (a user's is kept with a warning), and so does the plan's ``--enforce-eager``
    under PP (a user's is kept with a warning); each rank gets its own core list unless the user
    exported one. ``kv_set_by_user``: the user chose the KV space (flag or exported variable), so
    the per-rank value computed here is not used and not warned about. Returns the arguments,
    the layout and the warnings.
    """
    warnings: list[str] = []
    planned_ranks = local_ranks(
        plan.tensor_parallel_size, plan.pipeline_parallel_size, plan.data_parallel_size, plan.topology.nnodes
    )
    ranks = local_ranks(tp, pp, dp, plan.topology.nnodes)
    kv = kv_gib_per_rank(plan, ranks)
    if ranks != planned_ranks and not kv_set_by_user:
        warnings.append(_kv_warning(plan, planned_ranks, ranks, kv))
    if ranks <= 1:
        bind = plan.cpu_threads_bind or "auto"
        return args, CpuLayout(ranks=1, single_process=not plan.topology.multi_node, threads_bind=bind, kv_cache_gib=kv), warnings

    dropped: list[str] = []
    kept: list[A] = []
    for arg in args:
        if arg.name == "distributed-executor-backend" and arg.values == ("uni",):
            if is_user(arg):
                warnings.append(
                    f"--distributed-executor-backend uni runs a single process and cannot run "
                    f"TP {tp} x PP {pp}; drop it or use mp"
                )
            else:
                dropped.append("--distributed-executor-backend uni (single process)")
                continue
        if arg.name == "enforce-eager" and pp > 1:
            if is_user(arg):
                warnings.append(
                    f"pipeline parallelism (PP {pp}) on the CPU backend needs compiled mode: with "
                    "--enforce-eager the first request kills the engine (vllm-cpu.md); drop --enforce-eager"
                )
            else:
                dropped.append("--enforce-eager (PP on CPU needs compiled mode)")
                continue
        kept.append(arg)

    exported_bind = base_env.get("VLLM_CPU_OMP_THREADS_BIND")
    cpus = list(cpu_ids) if cpu_ids is not None else (list(plan.cpu_cores) or usable_cpus())
    bind = cpu_bind_lists(cpus, ranks)
    if planned_ranks == 1:
        dropped.append("VLLM_ENABLE_V1_MULTIPROCESSING=0 (single process)")
    if ranks != planned_ranks or dropped:
        dp_text = f" x DP {dp}" if dp > 1 else ""
        was = "one process" if planned_ranks == 1 else f"{planned_ranks} ranks"
        warnings.append(
            f"CPU target with TP {tp} x PP {pp}{dp_text} = {tp * pp * dp} ranks ({ranks} on this node, "
            f"{len(cpus)} CPU cores) where the plan was for {was}: "
            + (f"dropped {', '.join(dropped)}; " if dropped else "")
            + (f"keeping the exported VLLM_CPU_OMP_THREADS_BIND={exported_bind}"
               if exported_bind is not None else f"binding one core list per rank, VLLM_CPU_OMP_THREADS_BIND={bind}")
        )
    if len(cpus) < ranks:
        warnings.append(f"{ranks} CPU ranks share {len(cpus)} core(s); expect a slow server")
    return kept, CpuLayout(ranks=ranks, single_process=False, threads_bind=bind, kv_cache_gib=kv), warnings


def _kv_warning(plan: LaunchPlan, planned_ranks: int, ranks: int, kv: int) -> str:
    per_rank = plan.cpu_kv_cache_gib or 1
    planned_total = per_rank * planned_ranks
    text = (
        f"VLLM_CPU_KVCACHE_SPACE={kv} GiB per rank: vLLM allocates it in each of the {ranks} rank(s), "
        f"so the plan's {planned_total} GiB of KV for {planned_ranks} rank(s) is shared out "
        f"({ranks} x {kv} = {ranks * kv} GiB)"
    )
    if ranks * kv > planned_total:
        text += f", {ranks * kv - planned_total} GiB more than planned (1 GiB is the smallest value)"
    if ranks > planned_ranks:
        extra = (ranks - planned_ranks) * CPU_RUNTIME_OVERHEAD
        text += (
            f"; the {ranks - planned_ranks} extra process(es) also need ~{gib(extra)} of RAM the plan did not "
            "check: pass --tensor-parallel-size / --pipeline-parallel-size to kaito-run (not after --) "
            f"to plan RAM for {ranks} processes"
        )
    return text


__all__ = ["CpuLayout", "cpu_bind_lists", "kv_gib_per_rank", "layout_cpu", "local_ranks", "usable_cpus"]

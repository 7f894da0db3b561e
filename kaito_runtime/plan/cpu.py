"""The CPU plan: vLLM's CPU backend on one machine, with its KV space sized from the RAM left.

One process per rank (TP x PP ranks, TP 1 by default), each with its own VLLM_CPU_KVCACHE_SPACE;
the RAM must hold the weights, every rank's runtime and KV (vllm-cpu.md).
"""

from __future__ import annotations

import math

from kaito_runtime.errors import DoesNotFitError, InputError
from kaito_runtime.numbers import parse_int
from kaito_runtime.plan.fit import Layout
from kaito_runtime.plan.memory import (
    CPU_HOST_HEADROOM,
    CPU_RUNTIME_OVERHEAD,
    gib,
    kv_bytes_per_token_per_gpu,
    kv_dtype_bytes,
    small_or_gib,
    weights_basis,
    weights_share_bytes,
)
from kaito_runtime.plan.overrides import kv_cache_dtype_flag, required_context
from kaito_runtime.types import GiB, Decision, LaunchPlan, ModelSpec, NodeInventory, PlanOverrides, Topology
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, CPU_HEAD_DIMS, align_down, tp_rule_violation, valid_tensor_parallel_sizes

# CPU: size VLLM_CPU_KVCACHE_SPACE for this many full-length sequences at most (a laptop or CI box
# serves a handful of requests; more RAM than that only slows the allocation).
CPU_CONCURRENCY = 4


def plan_cpu(model: ModelSpec, inv: NodeInventory, topo: Topology, o: PlanOverrides) -> LaunchPlan:
    """vLLM's CPU backend: one process per rank (TP x PP ranks, TP 1 by default), each with its
    own VLLM_CPU_KVCACHE_SPACE; the RAM must hold the weights, every rank's runtime and KV."""
    att = model.attention
    if not att.is_mla and att.head_dim not in CPU_HEAD_DIMS:
        raise InputError(
            f"{model.name} cannot run on vLLM's CPU backend",
            why=f"Its head_dim {att.head_dim} is not one the CPU attention kernels support "
            f"({', '.join(map(str, sorted(CPU_HEAD_DIMS)))})",
            fix="run it on a GPU node",
        )
    nodes = topo.nnodes
    pp = o.pipeline_parallel_size or 1
    # Across nodes the CPU default is TP, one rank per node (vllm-cpu.md: TP 2 over two
    # `vllm serve --nnodes 2` works eager with one core each); PP across nodes is the option.
    tp = o.tensor_parallel_size or max(1, nodes // pp)
    if (tp * pp) % nodes:
        raise InputError(
            f"TP {tp} x PP {pp} = {tp * pp} ranks cannot be split evenly over {nodes} nodes",
            why="vLLM runs the same number of ranks on every node of a group",
            fix=f"leave --tensor-parallel-size out (TP {nodes} across {nodes} nodes, one rank each), "
            f"or pass --pipeline-parallel-size {nodes}",
        )
    cores = cpu_core_list(o.cpu_cores) if o.cpu_cores else None
    rule = tp_rule_violation(model, tp)
    if rule:
        valid = valid_tensor_parallel_sizes(model, tp)
        raise InputError(
            f"Invalid --tensor-parallel-size {tp} for {model.name}",
            why=rule,
            fix="leave --tensor-parallel-size out (one process is the fastest start on CPU)"
            + (f"; valid sizes up to {tp}: {', '.join(map(str, valid))}" if valid else ""),
        )
    ranks = tp * pp // nodes  # on this node; every node sizes its own RAM
    dtype_bytes = kv_dtype_bytes(model.dtype, o.kv_cache_dtype)
    per_token = kv_bytes_per_token_per_gpu(att, tp, pp, dtype_bytes)  # one rank's share
    weights = ranks * weights_share_bytes(model, tp, pp)  # one share per rank on this node
    runtime = ranks * CPU_RUNTIME_OVERHEAD
    ram = inv.host.ram_available_bytes
    free_for_kv = ram - weights - runtime - CPU_HOST_HEADROOM
    context = required_context(model, o)
    available_gib = max(0, free_for_kv) // ranks // GiB  # per rank: vLLM allocates the KV space in each
    min_kv_gib = max(1, math.ceil(context * per_token / GiB))
    per_rank = " per rank" if ranks > 1 else ""
    times = f"{ranks} x " if ranks > 1 else ""
    basis = weights_basis(model, 1, 1) + (f", the busiest stage's share counted for each of {ranks} ranks" if pp > 1 else "")
    if available_gib < min_kv_gib:
        raise DoesNotFitError(
            f"{model.name} does not fit in this machine's RAM" + (f" as {ranks} CPU ranks" if ranks > 1 else ""),
            why=f"It needs {small_or_gib(weights)} of weights ({basis}) + {times}{gib(CPU_RUNTIME_OVERHEAD)} runtime + "
            f"{gib(CPU_HOST_HEADROOM)} headroom + {times}{min_kv_gib} GiB KV for {context:,} tokens; "
            f"{gib(ram)} RAM is available",
            fix="free memory, use a smaller model, or run on a GPU node"
            + ("; fewer ranks need less RAM (leave --tensor-parallel-size / --pipeline-parallel-size out)" if ranks > 1 else "")
            + (f"; fits with --max-model-len <= {align_down(available_gib * GiB // per_token, CONTEXT_ALIGN)}"
               if o.max_model_len and available_gib >= 1 and available_gib * GiB // per_token >= CONTEXT_ALIGN else ""),
        )
    wanted = o.max_model_len or model.max_context
    sized_for = wanted * per_token * CPU_CONCURRENCY
    kv_gib = min(available_gib, max(min_kv_gib, math.ceil(sized_for / GiB)))
    capacity = kv_gib * GiB // per_token
    ram_left = (
        f"{gib(ram)} RAM available - weights {small_or_gib(weights)} - runtime {times}{gib(CPU_RUNTIME_OVERHEAD)} - "
        f"headroom {gib(CPU_HOST_HEADROOM)}"
        + (f", / {ranks} ranks as vLLM allocates VLLM_CPU_KVCACHE_SPACE in every rank" if ranks > 1 else "")
    )
    wants = f"{CPU_CONCURRENCY} x {wanted:,}-token sequences ({small_or_gib(sized_for)} at {per_token:,} bytes per token{per_rank})"
    if kv_gib < math.ceil(sized_for / GiB):
        kv_reason = f"all the RAM left{per_rank}, in whole GiB ({ram_left}); room for ~{capacity:,} tokens, less than {wants}"
    else:
        kv_reason = (
            f"enough for {wants}, in whole GiB; room for ~{capacity:,} tokens; the RAM left would "
            f"allow {available_gib} GiB{per_rank} ({ram_left})"
        )
    if o.max_model_len is not None:
        max_model_len = o.max_model_len
    elif capacity >= model.max_context:
        max_model_len = model.max_context
    else:
        max_model_len = align_down(capacity, CONTEXT_ALIGN)
    reason = inv.no_gpu_reason or "no GPU visible"
    if nodes > 1:
        layout = Decision(
            "layout", f"{Layout(tp, pp).describe()} across {nodes} nodes, {ranks} rank(s) per node",
            "CPU default across nodes: TP, one rank per node (vllm-cpu.md: works eager, one core each); "
            "mp executor, no Ray; PP across nodes with --pipeline-parallel-size (compiled mode)",
        )
    elif ranks == 1:
        layout = Decision("layout", "TP 1, one process", "vLLM CPU backend, uni executor (fastest start, vllm-cpu.md)")
    else:
        layout = Decision(
            "layout", f"{Layout(tp, pp).describe()}, {ranks} processes",
            f"user choice; vLLM CPU backend, mp executor, one core list per rank (VLLM_CPU_OMP_THREADS_BIND); "
            f"RAM counted for {ranks} processes",
        )
    eager = pp == 1
    cores_decision = (
        (Decision("cpu-cores", o.cpu_cores, "user choice (--cpu-cores): VLLM_CPU_OMP_THREADS_BIND"
                  + (", split per rank" if ranks > 1 else "")),) if cores else ()
    )
    decisions = cores_decision + (
        Decision("target", "cpu", "forced by the user" if o.force_cpu and inv.has_gpu else f"no GPU: {reason}"),
        layout,
        Decision("cpu-kv-cache", f"{kv_gib} GiB{per_rank}", kv_reason),
        Decision("max-model-len", str(max_model_len),
                 "user value" if o.max_model_len else f"the KV space holds ~{capacity:,} tokens; model limit {model.max_context:,}"),
        Decision("enforce-eager", "on", "skips torch.compile warm-up on CPU (start 44 s vs 90 s cold, vllm-cpu.md); "
                 "vLLM also gets TORCH_COMPILE_DISABLE=1 unless it is exported, so the first request does not compile its "
                 "helpers (3 s)")
        if eager else
        Decision("enforce-eager", "off", f"PP {pp} on the CPU backend needs compiled mode: eager, the first request "
                 "kills the engine (vllm-cpu.md)"),
    )
    return LaunchPlan(
        model=model,
        target="cpu",
        topology=topo,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_model_len=max_model_len,
        kv_cache_dtype=kv_cache_dtype_flag(o),
        kv_cache_tokens=capacity,
        cpu_kv_cache_gib=kv_gib,
        cpu_threads_bind=cores_text(cores) if cores and ranks == 1 else "auto",
        cpu_cores=tuple(cores or ()),
        enforce_eager=eager,
        decisions=decisions,
    )


def cpu_core_list(text: str) -> tuple[int, ...]:
    """'0-3,5' -> (0, 1, 2, 3, 5): the cores vLLM may use on this node (--cpu-cores)."""
    cores: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            lo, _, hi = part.partition("-")
            first, last = parse_int(lo), parse_int(hi or lo)
            if first is None or last is None or first < 0 or last < first:
                raise ValueError(part)
            cores += range(first, last + 1)
    except ValueError:
        raise InputError(
            f"--cpu-cores {text!r} is not a core list",
            why="It names the CPU cores vLLM may use on this node (VLLM_CPU_OMP_THREADS_BIND)",
            fix="give core numbers and ranges like 0, 1 or 0-3,8 (--cpu-cores / KAITO_CPU_CORES)",
        ) from None
    return tuple(sorted(set(cores)))


def cores_text(cores: tuple[int, ...] | list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form vLLM's id lists read); cores sorted and distinct."""
    ids = sorted(set(cores))
    parts: list[str] = []
    start = prev = ids[0]
    for cpu in [*ids[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)

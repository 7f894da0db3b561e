"""Does the model fit, and how: target, parallel layout, gpu-memory-utilization, max-model-len.

``plan_launch`` is pure and fast: it reads only the value types it is given and raises
``DoesNotFitError`` (with needed vs available numbers and the nearest layout that would fit) or
``InputError`` (contradictory overrides). Byte counting lives in ``memory.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from kaito_runtime.errors import DoesNotFitError, InputError
from kaito_runtime.memory import (
    CPU_HOST_HEADROOM,
    CPU_RUNTIME_OVERHEAD,
    KNOWN_KV_CACHE_DTYPES,
    UTILIZATION_CAP,
    UTILIZATION_HEADROOM,
    WEIGHT_EXPANSION,
    gib,
    kv_bytes_per_token_per_gpu,
    kv_dtype_bytes,
    max_utilization_free,
    runtime_overhead_bytes,
    small_or_gib,
    utilization_from_free,
    weights_basis,
    weights_share_bytes,
)
from kaito_runtime.values import (
    GiB,
    Decision,
    GpuInfo,
    GpuMemoryBudget,
    LaunchPlan,
    ModelSpec,
    NodeInventory,
    PlanOverrides,
    Topology,
)
from kaito_runtime.vllm_rules import (
    CONTEXT_ALIGN,
    CPU_HEAD_DIMS,
    align_down,
    tp_rule_violation,
    valid_tensor_parallel_sizes,
)

# KAITO sizes node counts for a 2048-token context unless the user sets max-model-len; we call
# a layout a fit only if at least this much context (or the model's whole context if smaller)
# fits in the KV cache.
MIN_CONTEXT = 2048

# We pass the model's full context as a number only when its KV cache needs at most this share of
# our estimated KV budget; otherwise we pass "auto" and let vLLM fit the context after profiling.
# KAITO #2132: the controller's estimate missed by ~23 % (22.5 GiB needed, 17.39 GiB there).
EXPLICIT_CONTEXT_MARGIN = 0.75

# KAITO main's tier: a model under half of one GPU runs as one replica per GPU (TP 1, DP = GPUs).
REPLICA_WEIGHT_FRACTION = 0.5

# How far the "needs N nodes" / "needs N GPUs" suggestions search.
MAX_SUGGESTED_NODES = 16
SUGGESTED_GPUS_PER_NODE = (2, 4, 8)

# CPU: size VLLM_CPU_KVCACHE_SPACE for this many full-length sequences at most (a laptop or CI box
# serves a handful of requests; more RAM than that only slows the allocation).
CPU_CONCURRENCY = 4


# ------------------------------------------------------------------------------------------------
# Layouts and their per-GPU fit
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int = 1
    dp: int = 1  # replicas on this node

    def describe(self) -> str:
        text = f"TP {self.tp}"
        if self.pp > 1:
            text += f" x PP {self.pp}"
        if self.dp > 1:
            text += f" x DP {self.dp} replicas"
        return text


@dataclass(frozen=True)
class Fit:
    """The worst GPU's budget for one layout at one utilization."""

    layout: Layout
    gpu_index: int
    total: int
    free: int
    utilization: float
    weights: int
    overhead: int
    kv_per_token: int

    @property
    def usable(self) -> int:
        return int(self.total * self.utilization)

    @property
    def kv_budget(self) -> int:
        return self.usable - self.weights - self.overhead

    @property
    def tokens(self) -> int:
        return max(0, self.kv_budget) // self.kv_per_token

    def fits(self, context: int) -> bool:
        return self.tokens >= context

    def kv_bytes(self, context: int) -> int:
        return context * self.kv_per_token

    def needed(self, context: int) -> int:
        return self.weights + self.overhead + self.kv_bytes(context)


def _evaluate(
    model: ModelSpec, gpus: Sequence[GpuInfo], layout: Layout, utilization: float, dtype_bytes: int
) -> Fit:
    weights = weights_share_bytes(model, layout.tp, layout.pp)
    overhead = runtime_overhead_bytes(weights)
    kv_per_token = kv_bytes_per_token_per_gpu(model.attention, layout.tp, layout.pp, dtype_bytes)
    worst = min(gpus, key=lambda g: g.total_bytes)
    return Fit(layout, worst.index, worst.total_bytes, worst.free_bytes, utilization, weights, overhead, kv_per_token)


# ------------------------------------------------------------------------------------------------
# Entry point
# ------------------------------------------------------------------------------------------------


def plan_launch(
    model: ModelSpec,
    inventory: NodeInventory,
    topology: Topology,
    overrides: PlanOverrides = PlanOverrides(),
) -> LaunchPlan:
    """Decide target, layout, utilization and context for ``model`` on this node / group."""
    _check_overrides(model, overrides)
    if overrides.force_cpu or not inventory.has_gpu:
        return _plan_cpu(model, inventory, topology, overrides)
    return _plan_gpu(model, inventory, topology, overrides)


def _check_overrides(model: ModelSpec, o: PlanOverrides) -> None:
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


def _required_context(model: ModelSpec, o: PlanOverrides) -> int:
    return o.max_model_len if o.max_model_len is not None else min(MIN_CONTEXT, model.max_context)


def _kv_dtype(o: PlanOverrides) -> str | None:
    return None if o.kv_cache_dtype in (None, "auto") else o.kv_cache_dtype


# ------------------------------------------------------------------------------------------------
# GPU
# ------------------------------------------------------------------------------------------------


def _plan_gpu(model: ModelSpec, inv: NodeInventory, topo: Topology, o: PlanOverrides) -> LaunchPlan:
    if topo.multi_node and not model.multi_node:
        raise InputError(
            f"{model.name} cannot run across {topo.nnodes} nodes",
            why="Its preset is single-node (multi_node: false)",
            fix="run it on one node (--nnodes 1) with enough GPU memory",
        )
    decisions: list[Decision] = []
    gpus = list(inv.gpus)
    if any(g.mig for g in gpus) and len(gpus) > 1:
        # One process sees one MIG slice; NCCL cannot join slices (KAITO: MIG needing > 1 slice is an error).
        decisions.append(Decision("gpus", "1 MIG slice", f"{len(gpus)} MIG slices visible; vLLM can use only one per process"))
        gpus = gpus[:1]
    _check_min_gpu_memory(model, gpus, inv)
    dtype_bytes = kv_dtype_bytes(model.dtype, o.kv_cache_dtype)
    context = _required_context(model, o)
    candidates, layout_reason = _candidate_layouts(model, gpus, topo, o, dtype_bytes)

    fit: Fit | None = None
    tried: list[Fit] = []
    for layout in candidates:
        used = gpus[: _local_gpus(layout, topo)]
        tried.append(_evaluate(model, used, layout, _utilization(used, o), dtype_bytes))
        if tried[-1].fits(context):
            fit = tried[-1]
            break
    if fit is None:
        closest = max(tried, key=lambda f: f.usable - f.needed(context))
        raise _does_not_fit(model, inv, topo, o, closest, context, dtype_bytes)

    layout = fit.layout
    decisions.append(Decision("target", "gpu", f"{_describe_gpus(gpus, inv)} visible ({inv.source})"))
    decisions.append(Decision("layout", layout.describe(), layout_reason(fit)))
    decisions.append(_utilization_decision(fit, o))
    kv_dtype = _kv_dtype(o)
    decisions.append(
        Decision(
            "kv-cache-dtype",
            kv_dtype or "auto",
            f"{dtype_bytes} byte(s) per element, {fit.kv_per_token:,} KV bytes per token per GPU"
            + (" (MLA latent, replicated on every TP rank)" if model.attention.is_mla else ""),
        )
    )
    max_model_len, auto, context_decision = _choose_context(model, fit, o)
    decisions.append(context_decision)
    decisions.append(
        Decision(
            "memory",
            f"{gib(fit.usable)} usable per GPU",
            f"weights {gib(fit.weights)} (x{WEIGHT_EXPANSION}) + runtime {gib(fit.overhead)} "
            f"+ KV {gib(fit.kv_budget)} (~{fit.tokens:,} tokens) on GPU {fit.gpu_index}",
        )
    )
    return LaunchPlan(
        model=model,
        target="gpu",
        topology=topo,
        tensor_parallel_size=layout.tp,
        pipeline_parallel_size=layout.pp,
        data_parallel_size=layout.dp,
        gpu_memory_utilization=fit.utilization,
        max_model_len=max_model_len,
        max_model_len_auto=auto,
        kv_cache_dtype=kv_dtype,
        kv_cache_tokens=fit.tokens,
        gpus_per_node=len(gpus),
        memory=GpuMemoryBudget(
            total=fit.total,
            free=fit.free,
            usable=fit.usable,
            weights=fit.weights,
            overhead=fit.overhead,
            kv_cache=fit.kv_budget,
            kv_bytes_per_token=fit.kv_per_token,
        ),
        decisions=tuple(decisions),
    )


def _check_min_gpu_memory(model: ModelSpec, gpus: Sequence[GpuInfo], inv: NodeInventory) -> None:
    """The preset's floor on each GPU's total memory: a failure seen below it that the arithmetic misses."""
    floor = model.min_gpu_memory_bytes
    if floor is None:
        return
    smallest = min(gpus, key=lambda g: g.total_bytes)
    if smallest.total_bytes >= floor:
        return
    source = model.min_gpu_memory_reason or "a failure recorded in the preset"
    raise DoesNotFitError(
        f"{model.name} needs GPUs with at least {gib(floor)} each; GPU {smallest.index} "
        f"({smallest.name}) has {gib(smallest.total_bytes)}",
        why=f"The preset sets min_gpu_memory_gib {floor / GiB:g} because {source}, a failure the "
        f"memory estimate does not predict; this node has {_describe_gpus(gpus, inv)}",
        fix=f"run it on GPUs with >= {gib(floor)} each (--sku / --assume-gpus to check a machine "
        "first), or choose a smaller model",
    )


def _local_gpus(layout: Layout, topo: Topology) -> int:
    """GPUs this node's vLLM uses: world size / nodes, times local replicas."""
    return layout.tp * layout.pp // topo.nnodes * layout.dp


def _utilization(used: Sequence[GpuInfo], o: PlanOverrides) -> float:
    if o.gpu_memory_utilization is not None:
        for g in used:
            if o.gpu_memory_utilization > max_utilization_free(g):
                raise DoesNotFitError(
                    f"--gpu-memory-utilization {o.gpu_memory_utilization} asks for more than is free",
                    why=(
                        f"GPU {g.index} has {gib(g.free_bytes)} free of {gib(g.total_bytes)}; "
                        f"--gpu-memory-utilization {o.gpu_memory_utilization} needs "
                        f"{gib(g.total_bytes * o.gpu_memory_utilization)} (vLLM refuses to start)"
                    ),
                    fix=f"use --gpu-memory-utilization <= {math.floor(max_utilization_free(g) * 100) / 100}, "
                    "or free the GPU (another process holds memory), or leave the flag out",
                )
        return o.gpu_memory_utilization
    util = utilization_from_free(used)
    if util <= 0:
        worst = min(used, key=lambda g: g.free_bytes / g.total_bytes)
        raise DoesNotFitError(
            f"GPU {worst.index} has no memory to spare",
            why=f"It has {gib(worst.free_bytes)} free of {gib(worst.total_bytes)}, less than the "
            f"{UTILIZATION_HEADROOM // (1024 * 1024)} MiB headroom",
            fix="stop the other processes using the GPU (nvidia-smi lists them) or pick another node",
        )
    return util


def _utilization_decision(fit: Fit, o: PlanOverrides) -> Decision:
    choice = f"{fit.utilization:.2f}"
    if o.gpu_memory_utilization is not None:
        return Decision("gpu-memory-utilization", choice, f"user value; GPU {fit.gpu_index} has {gib(fit.free)} free of {gib(fit.total)}")
    return Decision(
        "gpu-memory-utilization",
        choice,
        f"(free - 600 MiB) / total on the emptiest-looking GPU, floored, cap {UTILIZATION_CAP} "
        f"(KAITO #1374); GPU {fit.gpu_index}: {gib(fit.free)} free of {gib(fit.total)}",
    )


def _candidate_layouts(
    model: ModelSpec, gpus: Sequence[GpuInfo], topo: Topology, o: PlanOverrides, dtype_bytes: int
) -> tuple[list[Layout], Callable[[Fit], str]]:
    """Layouts to try, best first, and a function giving the layout decision's reason."""
    g = len(gpus)
    n = topo.nnodes
    total = g * n
    layers = model.attention.num_layers

    def check_tp(tp: int, limit: int) -> None:
        why = tp_rule_violation(model, tp)
        if why is None and tp > limit:
            why = f"tensor-parallel-size {tp} is more than the {limit} GPUs " + ("in the group" if n > 1 else "on this node")
        if why:
            fix = "leave --tensor-parallel-size out to let the planner choose"
            valid = valid_tensor_parallel_sizes(model, limit)
            if valid:
                fix += f"; valid sizes here: {', '.join(map(str, valid))}"
            raise InputError(f"Invalid --tensor-parallel-size {tp} for {model.name}", why=why, fix=fix)

    if n > 1:
        tp, pp = o.tensor_parallel_size, o.pipeline_parallel_size
        if o.tensor_parallel_across_nodes and tp is None and pp is None:
            tp, pp = total, 1
        elif tp is None and pp is None:
            tp = max(t for t in valid_tensor_parallel_sizes(model, g) if g % t == 0)
            pp = total // tp
        elif tp is None:
            assert pp is not None
            if total % pp:
                raise InputError(
                    f"--pipeline-parallel-size {pp} does not split {total} GPUs ({n} nodes x {g})",
                    why="vLLM needs TP x PP = GPUs per node x nodes",
                    fix=f"use a pipeline size that divides {total}",
                )
            tp = total // pp
        elif pp is None:
            if total % tp:
                raise InputError(
                    f"--tensor-parallel-size {tp} does not split {total} GPUs ({n} nodes x {g})",
                    why="vLLM needs TP x PP = GPUs per node x nodes",
                    fix=f"use a tensor-parallel size that divides {total}, normally {g} (GPUs per node)",
                )
            pp = total // tp
        if tp * pp != total:
            raise InputError(
                f"TP {tp} x PP {pp} = {tp * pp} does not match the group's {total} GPUs ({n} nodes x {g})",
                why="vLLM needs TP x PP = GPUs per node x nodes on a multi-node group",
                fix=f"use TP {g} x PP {n} (the convention) or another pair whose product is {total}",
            )
        check_tp(tp, total)
        if tp > g and not o.tensor_parallel_across_nodes:
            raise InputError(
                f"--tensor-parallel-size {tp} spans nodes ({g} GPUs per node)",
                why="Tensor parallel across nodes sends every layer's all-reduce over the network",
                fix=f"use TP {g} x PP {n}, or ask for it explicitly (tensor parallel across nodes)",
            )
        if pp > layers:
            raise InputError(f"PP {pp} is more than {model.name}'s {layers} layers", fix="use fewer nodes or a larger TP")
        layout = Layout(tp, pp)

        def reason(fit: Fit) -> str:
            if o.tensor_parallel_size or o.pipeline_parallel_size or o.tensor_parallel_across_nodes:
                return f"user choice over {n} nodes x {g} GPUs"
            return f"{n} nodes x {g} GPUs: TP within a node, PP across nodes (vLLM/KAITO convention)"

        return [layout], reason

    if o.tensor_parallel_across_nodes:
        raise InputError("Tensor parallel across nodes needs a multi-node group", fix="set the node count (--nnodes) or drop the option")
    pp = o.pipeline_parallel_size or 1
    if o.tensor_parallel_size is not None:
        tp = o.tensor_parallel_size
        check_tp(tp, g)
        if tp * pp > g:
            raise InputError(
                f"TP {tp} x PP {pp} needs {tp * pp} GPUs; this node has {g}",
                fix=f"use TP x PP <= {g}, or run on more nodes",
            )
        dp = g // (tp * pp) if o.parallel_preference == "replicas" else 1
        return [Layout(tp, pp, dp)], lambda fit: "user choice" + (
            f"; {g - fit.layout.tp * pp * fit.layout.dp} GPU(s) left idle" if g > tp * pp * dp else ""
        )

    valid = [t for t in valid_tensor_parallel_sizes(model, g) if t * pp <= g]
    if not valid:
        raise InputError(f"PP {pp} needs more than the {g} GPUs of this node", fix=f"use --pipeline-parallel-size <= {g}")
    largest = max(valid)
    if o.parallel_preference == "tensor":
        return [Layout(largest, pp, 1)], lambda fit: f"user preference: one replica across {largest * pp} GPUs"
    if o.parallel_preference == "replicas":
        return [Layout(t, pp, g // (t * pp)) for t in valid], lambda fit: (
            f"user preference: replicas; smallest TP that fits, {fit.layout.dp} replica(s)"
        )
    # auto
    if g > 1 and pp == 1 and model.weights_bytes * WEIGHT_EXPANSION < REPLICA_WEIGHT_FRACTION * min(x.total_bytes for x in gpus):
        one = _evaluate(model, gpus[:1], Layout(1), _safe_util(gpus, o), dtype_bytes)
        wanted = o.max_model_len or model.max_context
        if one.fits(wanted):
            return [Layout(1, 1, g)], lambda fit: (
                f"weights are < {REPLICA_WEIGHT_FRACTION:.0%} of one GPU and one GPU holds the full "
                f"{wanted}-token context: one replica per GPU for throughput (KAITO tier); "
                "parallel preference 'tensor' gives one large replica instead"
            )
    # Use as many GPUs as possible, with the largest TP among those (most KV room per replica);
    # phi-3-medium on 8 GPUs: TP 2 x DP 4 rather than TP 5 with 3 GPUs idle.
    order = sorted(valid, key=lambda t: (-(t * pp * (g // (t * pp))), -t))

    def auto_reason(fit: Fit) -> str:
        tp = fit.layout.tp
        if tp * pp == g:
            return f"TP = all {g} GPUs of the node (KAITO convention): most KV room per replica" if g > 1 else "single GPU"
        why = tp_rule_violation(model, g) or f"TP {g} does not fit"
        idle = g - tp * pp * fit.layout.dp
        return f"{why}; TP {tp} x {fit.layout.dp} replica(s) uses the most GPUs" + (f" ({idle} idle)" if idle else "")

    return [Layout(t, pp, g // (t * pp)) for t in order], auto_reason


def _safe_util(gpus: Sequence[GpuInfo], o: PlanOverrides) -> float:
    """Utilization for a what-if evaluation (never raises)."""
    if o.gpu_memory_utilization is not None:
        return o.gpu_memory_utilization
    return max(0.0, utilization_from_free(gpus))


def _choose_context(model: ModelSpec, fit: Fit, o: PlanOverrides) -> tuple[int | None, bool, Decision]:
    """Explicit number when the user gave one or the full context fits with margin; else vLLM's auto."""
    if o.max_model_len is not None:
        return o.max_model_len, False, Decision(
            "max-model-len", str(o.max_model_len),
            f"user value; fits our estimate of ~{fit.tokens:,} tokens of KV per replica",
        )
    full = model.max_context
    if fit.kv_bytes(full) <= EXPLICIT_CONTEXT_MARGIN * fit.kv_budget:
        return full, False, Decision(
            "max-model-len", str(full),
            f"the model's full context needs {gib(fit.kv_bytes(full))} of KV per GPU, within "
            f"{EXPLICIT_CONTEXT_MARGIN:.0%} of the {gib(fit.kv_budget)} estimated",
        )
    estimate = min(full, align_down(fit.tokens, CONTEXT_ALIGN))
    return None, True, Decision(
        "max-model-len", "auto",
        f"estimated ~{estimate:,} of {full:,} tokens fit ({gib(fit.kv_budget)} KV per GPU); vLLM's "
        "'auto' fits the real value after profiling (KAITO #2132: estimates ran ~23% optimistic)",
    )


# ------------------------------------------------------------------------------------------------
# Does not fit: one error with the numbers and the nearest layouts that would fit
# ------------------------------------------------------------------------------------------------


def _describe_gpus(gpus: Sequence[GpuInfo], inv: NodeInventory) -> str:
    text = f"{len(gpus)} x {gpus[0].name} ({gib(gpus[0].total_bytes)})"
    return text + (f" [{inv.label}]" if inv.label else "")


def _ideal_gpu(gpu: GpuInfo, index: int = 0) -> GpuInfo:
    return replace(gpu, index=index, free_bytes=gpu.total_bytes, mig=False)


def _does_not_fit(
    model: ModelSpec, inv: NodeInventory, topo: Topology, o: PlanOverrides, fit: Fit, context: int, dtype_bytes: int
) -> DoesNotFitError:
    gpus = list(inv.gpus)
    where = _describe_gpus(gpus, inv) + (f" per node, {topo.nnodes} nodes" if topo.multi_node else "")
    why = (
        f"At {fit.layout.describe()} each GPU needs {gib(fit.weights)} of weights "
        f"({weights_basis(model, fit.layout.tp, fit.layout.pp)}) + {gib(fit.overhead)} "
        f"runtime + {gib(fit.kv_bytes(context))} KV for {context:,} tokens = {gib(fit.needed(context))}; "
        f"GPU {fit.gpu_index} offers {gib(fit.usable)} ({gib(fit.total)} x {fit.utilization:.2f}, "
        f"{gib(fit.free)} free)"
    )
    fixes: list[str] = []
    layout = fit.layout
    if fit.weights + fit.overhead < fit.usable:
        longest = min(model.max_context, align_down(fit.tokens, CONTEXT_ALIGN))
        if o.max_model_len is not None and longest >= min(MIN_CONTEXT, model.max_context):
            fixes.append(f"fits with --max-model-len <= {longest}")
        if dtype_bytes > 1 and replace(fit, kv_per_token=fit.kv_per_token // dtype_bytes).fits(context):
            fixes.append("fits with --kv-cache-dtype fp8")
    ideal = _ideal_gpu(gpus[0])
    util = UTILIZATION_CAP if o.gpu_memory_utilization is None else o.gpu_memory_utilization
    # More GPUs of this kind on one node (tensor parallel).
    if not topo.multi_node:
        for count in SUGGESTED_GPUS_PER_NODE:
            tps = valid_tensor_parallel_sizes(model, count)
            if count <= len(gpus) or not tps:
                continue
            what_if = _evaluate(model, [ideal], Layout(max(tps), layout.pp), util, dtype_bytes)
            if what_if.fits(context):
                fixes.append(f"fits on one node with {count} x {gpus[0].name} (TP {max(tps)})")
                break
    # More nodes of this SKU (pipeline parallel across nodes).
    if model.multi_node:
        per_node = len(gpus)
        tps = [t for t in valid_tensor_parallel_sizes(model, per_node) if per_node % t == 0]
        for nodes in range(topo.nnodes + 1, MAX_SUGGESTED_NODES + 1):
            tp = max(tps)
            pp = nodes * per_node // tp
            if pp > model.attention.num_layers:
                break
            if _evaluate(model, [ideal], Layout(tp, pp), util, dtype_bytes).fits(context):
                fixes.append(f"needs {nodes} nodes of this SKU (--nnodes {nodes}: TP {tp} x PP {pp})")
                break
    elif not topo.multi_node:
        why += f". More nodes do not help: {model.name} is single-node (multi_node: false)"
    # Bigger GPUs, same count and layout.
    needed_total = math.ceil(fit.needed(context) / util / GiB)
    fixes.append(f"needs GPUs with >= {needed_total} GiB each at {layout.describe()}")
    return DoesNotFitError(f"{model.name} does not fit on {where}", why=why, fix="; or ".join(fixes))


# ------------------------------------------------------------------------------------------------
# CPU
# ------------------------------------------------------------------------------------------------


def _plan_cpu(model: ModelSpec, inv: NodeInventory, topo: Topology, o: PlanOverrides) -> LaunchPlan:
    """vLLM's CPU backend: one process per rank (TP x PP ranks, TP 1 by default), each with its
    own VLLM_CPU_KVCACHE_SPACE; the RAM must hold the weights, every rank's runtime and KV."""
    if topo.multi_node:
        raise InputError(
            "Multi-node runs need GPUs",
            why=f"This node has no usable GPU ({inv.no_gpu_reason or 'CPU target forced'}) and the launcher does not run "
            "vLLM's CPU backend across nodes",
            fix="run on one node (--nnodes 1) or on GPU nodes",
        )
    att = model.attention
    if not att.is_mla and att.head_dim not in CPU_HEAD_DIMS:
        raise InputError(
            f"{model.name} cannot run on vLLM's CPU backend",
            why=f"Its head_dim {att.head_dim} is not one the CPU attention kernels support "
            f"({', '.join(map(str, sorted(CPU_HEAD_DIMS)))})",
            fix="run it on a GPU node",
        )
    tp, pp = o.tensor_parallel_size or 1, o.pipeline_parallel_size or 1
    rule = tp_rule_violation(model, tp)
    if rule:
        valid = valid_tensor_parallel_sizes(model, tp)
        raise InputError(
            f"Invalid --tensor-parallel-size {tp} for {model.name}",
            why=rule,
            fix="leave --tensor-parallel-size out (one process is the fastest start on CPU)"
            + (f"; valid sizes up to {tp}: {', '.join(map(str, valid))}" if valid else ""),
        )
    ranks = tp * pp
    dtype_bytes = kv_dtype_bytes(model.dtype, o.kv_cache_dtype)
    per_token = kv_bytes_per_token_per_gpu(att, tp, pp, dtype_bytes)  # one rank's share
    weights = ranks * weights_share_bytes(model, tp, pp)
    runtime = ranks * CPU_RUNTIME_OVERHEAD
    ram = inv.host.ram_available_bytes
    free_for_kv = ram - weights - runtime - CPU_HOST_HEADROOM
    context = _required_context(model, o)
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
    if ranks == 1:
        layout = Decision("layout", "TP 1, one process", "vLLM CPU backend, uni executor (fastest start, vllm-cpu.md)")
    else:
        layout = Decision(
            "layout", f"{Layout(tp, pp).describe()}, {ranks} processes",
            f"user choice; vLLM CPU backend, mp executor, one core list per rank (VLLM_CPU_OMP_THREADS_BIND); "
            f"RAM counted for {ranks} processes",
        )
    eager = pp == 1
    decisions = (
        Decision("target", "cpu", "forced by the user" if o.force_cpu and inv.has_gpu else f"no GPU: {reason}"),
        layout,
        Decision("cpu-kv-cache", f"{kv_gib} GiB{per_rank}", kv_reason),
        Decision("max-model-len", str(max_model_len),
                 "user value" if o.max_model_len else f"the KV space holds ~{capacity:,} tokens; model limit {model.max_context:,}"),
        Decision("enforce-eager", "on", "skips torch.compile warm-up on CPU (start 44 s vs 90 s cold, vllm-cpu.md)")
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
        kv_cache_dtype=_kv_dtype(o),
        kv_cache_tokens=capacity,
        cpu_kv_cache_gib=kv_gib,
        cpu_threads_bind="auto",
        enforce_eager=eager,
        decisions=decisions,
    )

"""The GPU "does not fit" error: needed vs available per GPU, and the nearest layouts that would fit.

Searches what-ifs on ideal (empty) GPUs of the node's kind: a shorter context or fp8 KV cache,
more GPUs on one node, more nodes of this SKU, bigger GPUs.
"""

from __future__ import annotations

import math
from dataclasses import replace

from kaito_runtime.errors import DoesNotFitError
from kaito_runtime.plan.fit import Fit, Layout, describe_gpus, evaluate, weights_basis
from kaito_runtime.plan.memory import UTILIZATION_CAP, gib
from kaito_runtime.plan.overrides import MIN_CONTEXT
from kaito_runtime.types import GiB, GpuInfo, ModelSpec, NodeInventory, PlanOverrides, Topology, VllmMemoryProfile
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, align_down, valid_tensor_parallel_sizes

# How far the "needs N nodes" / "needs N GPUs" suggestions search.
MAX_SUGGESTED_NODES = 16
SUGGESTED_GPUS_PER_NODE = (2, 4, 8)


def _ideal_gpu(gpu: GpuInfo, index: int = 0) -> GpuInfo:
    return replace(gpu, index=index, free_bytes=gpu.total_bytes, mig=False)


def does_not_fit(
    model: ModelSpec,
    inv: NodeInventory,
    topo: Topology,
    o: PlanOverrides,
    fit: Fit,
    context: int,
    dtype_bytes: int,
    profile: VllmMemoryProfile,
) -> DoesNotFitError:
    """The error for ``fit``, the closest layout tried: its numbers and every nearby fix found."""
    gpus = list(inv.gpus)
    where = describe_gpus(gpus, inv) + (f" per node, {topo.nnodes} nodes" if topo.multi_node else "")
    why = (
        f"At {fit.layout.describe()} each GPU needs {gib(fit.weights)} of weights "
        f"({weights_basis(model, fit)}) + {gib(fit.overhead)} "
        f"runtime + {gib(fit.kv_bytes(context))} KV for {context:,} tokens = {gib(fit.needed(context))}; "
        f"GPU {fit.gpu_index} offers {gib(fit.usable)} ({gib(fit.cuda_total)} CUDA total x {fit.utilization:.2f}, "
        f"{gib(fit.free)} free), as vLLM {profile.line} budgets it"
    )
    if not fit.calibrated:
        why += (
            f"; {model.architecture} has no calibration observation, so {gib(fit.budget.limiting.margin)} "
            "per GPU is held back"
        )
    fixes: list[str] = []
    layout = fit.layout
    longest = align_down(fit.largest(model.max_context), CONTEXT_ALIGN)
    if o.max_model_len is not None and longest >= min(MIN_CONTEXT, model.max_context):
        fixes.append(
            f"fits with --max-model-len <= {longest} (the longest the predicted "
            f"{gib(max(0, fit.kv_budget))} of KV per GPU holds at {fit.layout.describe()})"
        )
    if fit.weights + fit.overhead < fit.usable and dtype_bytes > 1:
        used = [g for g in gpus if g.index == fit.gpu_index] or gpus
        fp8 = evaluate(model, used, fit.layout, fit.utilization, 1, profile, o)
        if fp8.fits(context):
            fixes.append("fits with --kv-cache-dtype fp8")
    ideal = _ideal_gpu(gpus[0])
    util = UTILIZATION_CAP if o.gpu_memory_utilization is None else o.gpu_memory_utilization
    # More GPUs of this kind on one node (tensor parallel).
    if not topo.multi_node:
        for count in SUGGESTED_GPUS_PER_NODE:
            tps = valid_tensor_parallel_sizes(model, count)
            if count <= len(gpus) or not tps:
                continue
            what_if = evaluate(model, [ideal], Layout(max(tps), layout.pp), util, dtype_bytes, profile, o)
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
            if evaluate(model, [ideal], Layout(tp, pp), util, dtype_bytes, profile, o).fits(context):
                fixes.append(f"needs {nodes} nodes of this SKU (--nnodes {nodes}: TP {tp} x PP {pp})")
                break
    elif not topo.multi_node:
        why += f". More nodes do not help: {model.name} is single-node (multi_node: false)"
    # Bigger GPUs, same count and layout.
    needed_total = math.ceil(fit.needed(context) / util / (fit.cuda_total / fit.total) / GiB)
    fixes.append(f"needs GPUs with >= {needed_total} GiB each at {layout.describe()}")
    return DoesNotFitError(f"{model.name} does not fit on {where}", why=why, fix="; or ".join(fixes))


def gpu_node_hint(fix: str | None, *, has_gpu: bool, described: bool, force_cpu: bool, dry_run: bool) -> str | None:
    """On a machine without GPUs (and no --sku / --assume-gpus / --cpu), the answer people want
    is usually the plan for the GPU node the model will run on: say how to get it."""
    if has_gpu or described or force_cpu:
        return fix
    how = "--sku SKU or --assume-gpus 4xA100-80GB"
    hint = f"plan for a GPU node with {how}" if dry_run else f"see the plan for a GPU node with --dry-run {how}"
    return f"{fix}; or {hint}" if fix else hint

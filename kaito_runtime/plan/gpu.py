"""The GPU plan: run the first candidate layout that fits, then choose utilization and context.

Raises ``DoesNotFitError`` when no layout fits (text from ``fit_suggestions``), when the GPUs are
below the preset's memory floor, or when the asked-for utilization is more than is free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from kaito_runtime.errors import DoesNotFitError, InputError
from kaito_runtime.plan.suggestions import does_not_fit
from kaito_runtime.plan.layouts import candidate_layouts
from kaito_runtime.plan.fit import Fit, Layout, describe_gpus, evaluate, weights_basis
from kaito_runtime.plan.memory import (
    UTILIZATION_CAP,
    UTILIZATION_HEADROOM,
    gib,
    kv_dtype_bytes,
    max_utilization_free,
    utilization_from_free,
)
from kaito_runtime.plan.overrides import kv_cache_dtype_flag, required_context
from kaito_runtime.types import (
    GiB,
    Decision,
    GpuInfo,
    GpuMemoryBudget,
    LaunchPlan,
    ModelSpec,
    NodeInventory,
    PlanOverrides,
    Topology,
    VllmMemoryProfile,
)
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, align_down


def plan_gpu(model: ModelSpec, inv: NodeInventory, topo: Topology, o: PlanOverrides, profile: VllmMemoryProfile) -> LaunchPlan:
    """Plan for this node's GPUs (or this node's share of a multi-node group)."""
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
    context = required_context(model, o)
    candidates, layout_reason = candidate_layouts(model, gpus, topo, o, dtype_bytes, profile)

    fit: Fit | None = None
    tried: list[Fit] = []
    for layout in candidates:
        used = gpus[: _local_gpus(layout, topo)]
        tried.append(evaluate(model, used, layout, _utilization(used, o), dtype_bytes, profile, o))
        if tried[-1].fits(context):
            fit = tried[-1]
            break
    if fit is None:
        closest = max(tried, key=lambda f: f.usable - f.needed(context))
        raise does_not_fit(model, inv, topo, o, closest, context, dtype_bytes, profile)

    layout = fit.layout
    decisions.append(Decision("target", "gpu", f"{describe_gpus(gpus, inv)} visible ({inv.source})"))
    decisions.append(Decision("layout", layout.describe(), layout_reason(fit)))
    decisions.append(_utilization_decision(fit, o))
    kv_dtype = kv_cache_dtype_flag(o)
    decisions.append(
        Decision(
            "kv-cache-dtype",
            kv_dtype or "auto",
            f"{dtype_bytes} byte(s) per element, {fit.kv_per_token:,} KV bytes per token per GPU"
            + (" (MLA latent, replicated on every TP rank)" if model.attention.is_mla else ""),
        )
    )
    max_model_len, auto, served, context_decision = _choose_context(model, fit, o, profile)
    decisions.append(context_decision)
    decisions.append(_memory_decision(model, fit, profile, served))
    stage = fit.budget.limiting
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
        kv_cache_tokens=fit.tokens(served),
        context_limit=min(model.max_context, align_down(fit.largest(model.max_context), CONTEXT_ALIGN)) or None,
        gpus_per_node=len(gpus),
        memory=GpuMemoryBudget(
            total=fit.total,
            free=fit.free,
            usable=fit.usable,
            weights=fit.weights,
            overhead=fit.overhead,
            kv_cache=fit.kv_budget,
            kv_bytes_per_token=fit.kv_per_token,
            cuda_total=fit.cuda_total,
            non_torch=stage.non_torch,
            activation=stage.activation,
            cudagraph=stage.cudagraph,
            margin=stage.margin,
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
        f"memory estimate does not predict; this node has {describe_gpus(gpus, inv)}",
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


def _memory_decision(model: ModelSpec, fit: Fit, profile: VllmMemoryProfile, served: int) -> Decision:
    stage = fit.budget.limiting
    parts = f"non-torch {gib(stage.non_torch)}, activation peak {gib(stage.activation)}"
    parts += f", CUDA graphs {gib(stage.cudagraph)}" if stage.cudagraph else ", no CUDA graphs (eager)"
    reason = (
        f"{gib(fit.cuda_total)} CUDA total x {fit.utilization:.2f}: weights {gib(fit.weights)} "
        f"({weights_basis(model, fit)}) + runtime {gib(fit.overhead)} ({parts}"
        + (f", margin {gib(stage.margin)}" if stage.margin else "")
        + f") + KV {gib(fit.kv_budget)} (~{fit.tokens(served):,} tokens at {served:,}) on GPU {fit.gpu_index}; "
        f"vLLM {profile.line}'s budget (presets/vllm/memory.yaml; pinned vLLM {profile.pinned}), batch of {fit.budget.batch_tokens:,} tokens"
    )
    if fit.calibrated:
        reason += f"; {model.architecture} is among the calibrated architectures"
    else:
        reason += (
            f"; {model.architecture} has no calibration observation: {gib(stage.margin)} per GPU held back "
            f"(uncalibrated_margin: {profile.sources['uncalibrated_margin']})"
        )
    return Decision("memory", f"{gib(fit.usable)} usable per GPU", reason)


def _choose_context(
    model: ModelSpec, fit: Fit, o: PlanOverrides, profile: VllmMemoryProfile
) -> tuple[int | None, bool, int, Decision]:
    """(--max-model-len, auto?, the context vLLM will run, the decision), issue 12 section 5:

    - the user's value (the layout was chosen to fit it);
    - the model's full context when it fits the predicted pool with the stated margin;
    - else ``auto`` when the pinned vLLM has it (it fits the real value after profiling),
      or the longest multiple of 256 that fits with the margin.
    """
    margin = fit.full_context_margin
    if o.max_model_len is not None:
        wanted = o.max_model_len
        reason = f"user value; the predicted KV holds it (~{fit.tokens(wanted):,} tokens at this length"
        if not fit.fits_with_margin(wanted):
            reason += f", within {margin:.0%} of the pool's limit: vLLM refuses it if the prediction is high"
        return wanted, False, wanted, Decision("max-model-len", str(wanted), reason + ")")
    full = model.max_context
    if fit.fits_with_margin(full):
        return full, False, full, Decision(
            "max-model-len", str(full),
            f"the model's full context needs {gib(fit.kv_bytes(full))} of KV per GPU, within "
            f"{1 - margin:.0%} of the {gib(fit.kv_budget)} predicted (full_context_margin {margin:g})",
        )
    longest = align_down(fit.largest(full, 1 - margin), CONTEXT_ALIGN)
    if profile.max_model_len_auto:
        found = fit.largest(full)  # what vLLM's auto finds if the prediction is right
        return None, True, found, Decision(
            "max-model-len", "auto",
            f"the full {full:,} tokens need {gib(fit.kv_bytes(full))} of KV per GPU, more than "
            f"{1 - margin:.0%} of the {gib(fit.kv_budget)} predicted; ~{found:,} fit, and vLLM "
            f"{profile.line} fits the real value after profiling (--max-model-len auto)",
        )
    length = longest or align_down(fit.largest(full), CONTEXT_ALIGN) or fit.largest(full)
    return length, False, length, Decision(
        "max-model-len", str(length),
        f"the longest multiple of {CONTEXT_ALIGN} that fits {1 - margin:.0%} of the {gib(fit.kv_budget)} "
        f"of KV predicted per GPU; the full {full:,} tokens need {gib(fit.kv_bytes(full))} "
        f"(vLLM {profile.line} has no --max-model-len auto)",
    )

"""A parallel layout (TP x PP x DP) and what it costs on the worst GPU: the budget every GPU plan is judged by.

The budget is vLLM's own (``vllm_budget``): utilization x the CUDA total, less the busiest
stage's weights share and the non-KV overhead of this layout and model kind; the KV left becomes
vLLM's block pool, and a context fits when one request of it fits that pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kaito_runtime.plan.memory import gib
from kaito_runtime.plan.vllm_budget import GpuBudget, budget_model, cuda_total_bytes, gpu_budget
from kaito_runtime.types import GpuInfo, ModelSpec, NodeInventory, PlanOverrides, VllmMemoryProfile


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
    total: int  # NVML's total
    free: int
    cuda_total: int  # what vLLM multiplies by the utilization
    utilization: float
    budget: GpuBudget
    kv_per_token: int  # full-attention KV bytes per token on the limiting stage's GPU
    full_context_margin: float  # share of the pool a context passed as a number may not use

    @property
    def usable(self) -> int:
        return self.budget.limiting.requested

    @property
    def weights(self) -> int:
        return self.budget.limiting.weights

    @property
    def overhead(self) -> int:
        return self.budget.limiting.overhead

    @property
    def kv_budget(self) -> int:
        return self.budget.limiting.kv_bytes

    @property
    def calibrated(self) -> bool:
        return self.budget.calibrated

    def fits(self, context: int, share: float = 1.0) -> bool:
        return self.budget.pool.fits(context, share)

    def fits_with_margin(self, context: int) -> bool:
        return self.fits(context, 1 - self.full_context_margin)

    def tokens(self, context: int) -> int:
        """What vLLM will log as "GPU KV cache size: N tokens" at this max-model-len."""
        return self.budget.pool.reported_tokens(context)

    def largest(self, limit: int, share: float = 1.0) -> int:
        """The longest context up to ``limit`` that fits ``share`` of the pool (0 if none)."""
        return self.budget.pool.largest_context(limit, share)

    def kv_bytes(self, context: int) -> int:
        return self.budget.pool.kv_bytes(context)

    def needed(self, context: int) -> int:
        return self.weights + self.overhead + self.kv_bytes(context)


def evaluate(
    model: ModelSpec,
    gpus: Sequence[GpuInfo],
    layout: Layout,
    utilization: float,
    dtype_bytes: int,
    profile: VllmMemoryProfile,
    o: PlanOverrides,
) -> Fit:
    """``layout``'s budget on the smallest of ``gpus`` at ``utilization``."""
    worst = min(gpus, key=lambda g: g.total_bytes)
    cuda_total = cuda_total_bytes(profile, worst.name, worst.total_bytes)
    shape = budget_model(model, layout.tp, dtype_bytes)
    budget = gpu_budget(
        shape, profile, cuda_total=cuda_total, gpu_name=worst.name, utilization=utilization, tp=layout.tp,
        pp=layout.pp, enforce_eager=o.enforce_eager, max_num_batched_tokens=o.max_num_batched_tokens,
        max_num_seqs=o.max_num_seqs,
    )
    kv_per_token = shape.kv_bytes_per_token_per_layer * budget.limiting.layers
    return Fit(
        layout, worst.index, worst.total_bytes, worst.free_bytes, cuda_total, utilization, budget, kv_per_token,
        profile.full_context_margin,
    )


def weights_basis(model: ModelSpec, fit: Fit) -> str:
    """How ``fit.weights`` was counted, for messages: '131.4 GiB checkpoint, stage 1's 40 of 80
    layers, split over TP 2, + buffers', so the figure can be traced to the preset's weight size."""
    text = f"{gib(model.weights_bytes)} checkpoint"
    stage = fit.budget.limiting
    if fit.layout.pp > 1:
        text += f", pipeline stage {stage.stage}'s {stage.layers} of {model.attention.num_layers} layers"
    if fit.layout.tp > 1:
        text += f", split over TP {fit.layout.tp}"
    return text + ", + vLLM's buffers"


def describe_gpus(gpus: Sequence[GpuInfo], inv: NodeInventory) -> str:
    """'4 x NVIDIA A100 (80.0 GiB) [label]' for decisions and errors."""
    text = f"{len(gpus)} x {gpus[0].name} ({gib(gpus[0].total_bytes)})"
    return text + (f" [{inv.label}]" if inv.label else "")

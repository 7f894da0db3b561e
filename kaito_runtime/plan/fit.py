"""A parallel layout (TP x PP x DP) and what it costs on the worst GPU: the budget every GPU plan is judged by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kaito_runtime.plan.memory import gib, kv_bytes_per_token_per_gpu, runtime_overhead_bytes, weights_share_bytes
from kaito_runtime.types import GpuInfo, ModelSpec, NodeInventory


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


def evaluate(
    model: ModelSpec, gpus: Sequence[GpuInfo], layout: Layout, utilization: float, dtype_bytes: int
) -> Fit:
    """``layout``'s budget on the smallest of ``gpus`` at ``utilization``."""
    weights = weights_share_bytes(model, layout.tp, layout.pp)
    overhead = runtime_overhead_bytes(weights)
    kv_per_token = kv_bytes_per_token_per_gpu(model.attention, layout.tp, layout.pp, dtype_bytes)
    worst = min(gpus, key=lambda g: g.total_bytes)
    return Fit(layout, worst.index, worst.total_bytes, worst.free_bytes, utilization, weights, overhead, kv_per_token)


def describe_gpus(gpus: Sequence[GpuInfo], inv: NodeInventory) -> str:
    """'4 x NVIDIA A100 (80.0 GiB) [label]' for decisions and errors."""
    text = f"{len(gpus)} x {gpus[0].name} ({gib(gpus[0].total_bytes)})"
    return text + (f" [{inv.label}]" if inv.label else "")

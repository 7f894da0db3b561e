"""Planner test helpers: made-up nodes, a CPU box, topologies, a tiny model and the shipped presets."""

from __future__ import annotations

from kaito_runtime.plan import plan_launch as _plan_launch
from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.node.vllm_memory import load_profile
from kaito_runtime.types import (
    GiB,
    AttentionGeometry,
    GpuInfo,
    HostInfo,
    ModelSpec,
    NodeInventory,
    PlanOverrides,
    Topology,
)

# NVML-like per-GPU totals (cluster-conventions.md "GPU SKUs").
A10, A100_40, A100_80, H100, H200 = 22.5, 40.0, 80.0, 79.6, 140.0


def node(count: int, total_gib: float, name: str = "NVIDIA GPU", free_gib: float | None = None, **kw) -> NodeInventory:
    total = int(total_gib * GiB)
    free = total if free_gib is None else int(free_gib * GiB)
    gpus = tuple(GpuInfo(i, name, f"GPU-{i}", total, free, (8, 0), **kw) for i in range(count))
    return NodeInventory(gpus, HostInfo(cpu_count=96, ram_total_bytes=900 * GiB, ram_available_bytes=800 * GiB), source="sku")


def cpu_box(ram_available_gib: float) -> NodeInventory:
    host = HostInfo(cpu_count=2, ram_total_bytes=int(24 * GiB), ram_available_bytes=int(ram_available_gib * GiB))
    return NodeInventory((), host, source="none", no_gpu_reason="NVML library not found")


def group(nnodes: int, rank: int = 0) -> Topology:
    return Topology(nnodes=nnodes, node_rank=rank, leader_address="10.0.0.1" if nnodes > 1 else None)


def tiny_model(**kw) -> ModelSpec:
    """The tiny Llama of vllm-cpu.md: 2 layers, 4 heads, 2 KV heads, head_dim 32, 512 context."""
    args = dict(
        name="tiny",
        architecture="LlamaForCausalLM",
        weights_bytes=1_641_920,
        max_context=512,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=32),
    )
    args.update(kw)
    return ModelSpec(**args)


CATALOG = load_catalog()


def preset(name: str) -> ModelSpec:
    return CATALOG.get(name)


def decision(plan, topic: str):
    return next(d for d in plan.decisions if d.topic == topic)


# The pinned vLLM's memory constants, as the API hands them to the planner.
PROFILE = load_profile()


def plan_launch(model: ModelSpec, inventory: NodeInventory, topology: Topology, overrides: PlanOverrides = PlanOverrides(), **kw):
    """``kaito_runtime.plan.plan_launch`` with the shipped profile (as ``api.prepare`` calls it)."""
    kw.setdefault("profile", PROFILE)
    return _plan_launch(model, inventory, topology, overrides, **kw)

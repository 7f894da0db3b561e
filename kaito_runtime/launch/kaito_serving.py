"""KAITO's serving features as vLLM's own flags: CPU KV offload, the 429 guard, draining on stop,
and the prefill/decode role. Pure: the caller measures the container's memory.

- CPU KV offload (KAITO: LMCache, on by default at 0.5): vLLM's native ``--kv-offloading-size``,
  GiB in total over the TP ranks, = the container's free memory x utilization. Left out, with the
  reason, for KAITO's exclusions (hybrid-KV models, MIG, data-parallel replicas, pipeline
  parallelism across nodes, a prefill/decode role), on the CPU target (the KV cache is already in
  CPU memory), and when the user gave ``--kv-offloading-size`` or ``--kv-transfer-config``
  (vLLM's offload overwrites the connector of a transfer config).
- 429 guard: ``--middleware kaito_runtime.vllm_ext.rate_limit.RateLimitMiddleware`` beside any
  middleware of the user's; the threshold goes in ``KAITO_RATE_LIMIT_MAX_NUM_SEQS`` when the
  merged flags name ``--max-num-seqs``.
- Drain: ``--shutdown-timeout`` from the grace period (``shutdown_timeout_for``), unless given.
- Role: KAITO's Nixl ``--kv-transfer-config`` for prefill/decode, unless one is given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from kaito_runtime.types import GiB, LaunchPlan, NodeInventory

RATE_LIMIT_MIDDLEWARE = "kaito_runtime.vllm_ext.rate_limit.RateLimitMiddleware"
RATE_LIMIT_THRESHOLD_ENV = "KAITO_RATE_LIMIT_MAX_NUM_SEQS"  # = rate_limit.THRESHOLD_ENV
NIXL_TRANSFER_CONFIG = json.dumps(
    {"kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_load_failure_policy": "fail"}, separators=(",", ":")
)
ROLES = ("prefill", "decode")
# Architectures whose KV cache mixes kinds of layers (state-space / linear attention beside full
# attention): KAITO turns offload off for them, and vLLM's native offload does not cover them.
HYBRID_ARCHITECTURE_MARKS = (
    "Mamba", "Jamba", "Zamba", "Bamba", "Hybrid", "Qwen3Next", "FalconH1", "NemotronH", "Lfm2", "Plamo2", "MiniMaxText01",
)
DRAIN_MARGIN_SECONDS = 5  # of the grace period, kept for vLLM's own teardown after the drain


@dataclass(frozen=True)
class KaitoServing:
    """What the user asked of KAITO's serving features (from the request) and what was measured."""

    kv_offload_utilization: float | None = None  # 0..1; None/0: no offload
    container_free_bytes: int | None = None  # the container's free memory (node.container_memory)
    container_memory_source: str | None = None  # that figure and where it comes from, for the plan
    rate_limit: bool = True
    grace_seconds: float | None = None  # None: no --shutdown-timeout from us
    inference_role: str | None = None  # "prefill" / "decode"
    mig: bool = False  # a GPU of the plan is a MIG slice


def serving_for(serve, plan: LaunchPlan, inventory: NodeInventory) -> KaitoServing:
    """KAITO's serving features as ``serve`` (the settled request's serve slice) asks for them,
    with the container's free memory measured when CPU KV offload is wanted on the GPU target."""
    free = source = None
    if serve.kv_cache_cpu_memory_utilization and plan.target == "gpu":
        from kaito_runtime.node.container_memory import container_memory

        memory = container_memory()
        free, source = memory.available_bytes, memory.describe()
    return KaitoServing(
        kv_offload_utilization=serve.kv_cache_cpu_memory_utilization, container_free_bytes=free,
        container_memory_source=source, rate_limit=serve.rate_limit, grace_seconds=serve.grace_seconds,
        inference_role=serve.inference_role, mig=any(gpu.mig for gpu in inventory.gpus),
    )


@dataclass(frozen=True)
class KvOffload:
    """The offload decision shown by the plan: the size passed to vLLM, or None and why not."""

    size_gib: float | None
    reason: str

    def describe(self) -> str:
        if self.size_gib is None:
            return f"off ({self.reason})"
        return f"--kv-offloading-size {self.size_gib:g} GiB ({self.reason})"


def is_hybrid_kv(plan: LaunchPlan) -> bool:
    model = plan.model
    mixed_windows = 0 < model.sliding_window_layers < model.attention.num_layers
    return mixed_windows or any(mark in model.architecture for mark in HYBRID_ARCHITECTURE_MARKS)


def kv_offload(plan: LaunchPlan, serving: KaitoServing, user_flags: set[str]) -> KvOffload:
    """Whether to pass ``--kv-offloading-size``, and how much; ``user_flags``: the merged
    command's flag names given by the user (config file or pass-through)."""
    u = serving.kv_offload_utilization
    if not u:
        return KvOffload(None, "--kv-cache-cpu-memory-utilization is 0 or unset")
    if "kv-offloading-size" in user_flags:
        return KvOffload(None, "you gave --kv-offloading-size: yours is used")
    if "kv-transfer-config" in user_flags:
        return KvOffload(None, "you gave --kv-transfer-config: vLLM's offload would overwrite its connector")
    excluded = _excluded(plan, serving)
    if excluded:
        return KvOffload(None, excluded)
    if not serving.container_free_bytes:
        return KvOffload(None, "the container's free memory is not known")
    size = math.floor(serving.container_free_bytes * u / GiB * 100) / 100
    if size <= 0:
        return KvOffload(None, "the container has no free memory to offload to")
    where = serving.container_memory_source or f"{serving.container_free_bytes / GiB:.2f} GiB free"
    return KvOffload(size, f"{u:g} x {where}; the total over all TP ranks")


def _excluded(plan: LaunchPlan, serving: KaitoServing) -> str | None:
    """KAITO's exclusions, plus the CPU target; None when offload applies."""
    if plan.target == "cpu":
        return "the CPU target keeps its KV cache in CPU memory already"
    if serving.inference_role:
        return f"a {serving.inference_role} pod moves its KV cache with Nixl"
    if serving.mig:
        return "MIG slices (KAITO turns offload off on MIG)"
    if plan.data_parallel_size > 1:
        return "data-parallel replicas (KAITO turns offload off in data-parallel mode)"
    if plan.topology.multi_node and plan.pipeline_parallel_size > 1:
        return "pipeline parallelism across nodes (KAITO turns offload off there)"
    if is_hybrid_kv(plan):
        return f"{plan.model.architecture} has a hybrid KV cache (KAITO turns offload off for these)"
    return None


def shutdown_timeout_for(grace_seconds: float) -> int:
    """vLLM's ``--shutdown-timeout`` (whole seconds) for a grace period: the drain gets the grace
    period less a margin for vLLM's teardown (5 s, or a quarter of a short grace period), so the
    launcher's kill at the end of the grace period never cuts a drain that vLLM thinks it has."""
    if grace_seconds < 1:
        return 0
    margin = min(DRAIN_MARGIN_SECONDS, grace_seconds / 4)
    return max(1, math.floor(grace_seconds - margin))


def role_transfer_config(role: str | None, user_flags: set[str]) -> str | None:
    """KAITO's Nixl transfer config for a prefill/decode pod, unless the user gave one."""
    if role is None or "kv-transfer-config" in user_flags:
        return None
    return NIXL_TRANSFER_CONFIG

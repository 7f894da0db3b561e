"""Does the model fit, and how: target, parallel layout, gpu-memory-utilization, max-model-len.

``plan_launch`` is the one entry point. It is pure and fast: it reads only the value types it is
given (the model, the node, its place in the group, the user's overrides and the pinned vLLM's
memory profile, loaded outside the planner) and raises ``DoesNotFitError`` (with needed vs available numbers and the nearest layout that
would fit) or ``InputError`` (contradictory overrides).

The work is split by concern:
  overrides.py    check the user's overrides; the context a plan must hold
  fit.py          a TP x PP x DP layout and its budget on the worst GPU
  vllm_budget.py  that budget as vLLM itself computes it (weights, overhead, KV block pool)
  layouts.py      which layouts to try on GPUs, best first, and why
  gpu.py          the GPU plan: first layout that fits, utilization, context
  suggestions.py  the GPU "does not fit" error and the nearest layouts that would fit
  cpu.py          the CPU plan: ranks and KV space from the RAM left
  memory.py       byte counting; vllm_rules.py: what vLLM itself accepts
"""

from __future__ import annotations

from kaito_runtime.plan.cpu import plan_cpu
from kaito_runtime.plan.gpu import plan_gpu
from kaito_runtime.plan.overrides import MIN_CONTEXT, check_overrides
from kaito_runtime.types import LaunchPlan, ModelSpec, NodeInventory, PlanOverrides, Topology, VllmMemoryProfile

__all__ = ["MIN_CONTEXT", "plan_launch"]


def plan_launch(
    model: ModelSpec,
    inventory: NodeInventory,
    topology: Topology,
    overrides: PlanOverrides = PlanOverrides(),
    *,
    profile: VllmMemoryProfile,
) -> LaunchPlan:
    """Decide target, layout, utilization and context for ``model`` on this node / group.

    ``profile``: the pinned vLLM's memory constants (``kaito_runtime.node.vllm_memory.load_profile``).
    """
    check_overrides(model, overrides)
    if overrides.force_cpu or not inventory.has_gpu:
        return plan_cpu(model, inventory, topology, overrides)
    return plan_gpu(model, inventory, topology, overrides, profile)

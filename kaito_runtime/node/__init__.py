"""What this node has and where it stands: the node step's public face.

  inventory         NVML and the host -> NodeInventory (``probe_node``)
  skus              cloud GPU SKUs and assumed GPUs (--sku, --assume-gpus)
  topology          this node's place in its group, from options and the environment
  vllm_memory       the pinned vLLM's memory profile, handed to the planner
  container_memory  the container's free memory (cgroup v1/v2), for CPU KV offload
  nvml              the one NVML interface (real, or a recording)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kaito_runtime.errors import InputError
from kaito_runtime.node.topology import leader_of, resolve_topology
from kaito_runtime.types import NodeInventory

__all__ = ["leader_of", "probe_node", "resolve_topology"]


def probe_node(*, sku: str | None, assume_gpus: str | None, weights_dir: Path, env: Mapping[str, str]) -> NodeInventory:
    """This node's GPUs and host, or the ones --sku / --assume-gpus describe. --sku takes the
    machine's CPUs and RAM from the SKU table; --assume-gpus names GPUs only, so the host is
    this machine's (what a CPU plan, or a --cpu one, is sized against). ``weights_dir``: whose
    disk the host's free space is read from."""
    from kaito_runtime.node import inventory, skus

    if sku and assume_gpus:
        raise InputError("Both --sku and --assume-gpus were given", fix="use one of them")
    if sku:
        return skus.inventory_for_sku(sku)
    if assume_gpus:
        return skus.inventory_for_assumed_gpus(assume_gpus, host=inventory.probe_host(weights_dir))
    return inventory.probe_inventory(weights_dir=weights_dir, env=env)

"""Text and JSON views of presets, plans and the node, for the CLI. Pure: values in, strings out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from kaito_runtime.values import GiB, ModelSpec, NodeInventory, Topology


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GiB:.1f} GiB"


def _context(tokens: int) -> str:
    return f"{tokens // 1024}k" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def presets_table(presets: Iterable[ModelSpec]) -> str:
    rows = [("PRESET", "FAMILY", "PARAMS", "WEIGHTS", "CONTEXT", "MULTI-NODE", "GATED")]
    for p in presets:
        rows.append(
            (
                p.name,
                p.family or "-",
                f"{p.params_billions:g}B" if p.params_billions else "-",
                _gib(p.weights_bytes),
                _context(p.max_context),
                "yes" if p.multi_node else "no",
                "yes" if p.gated else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def preset_dict(p: ModelSpec) -> dict[str, Any]:
    return {
        "name": p.name,
        "family": p.family,
        "repo_id": p.repo_id,
        "revision": p.revision,
        "architecture": p.architecture,
        "params_billions": p.params_billions,
        "weights_bytes": p.weights_bytes,
        "weights_gib": round(p.weights_bytes / GiB, 2),
        "max_context": p.max_context,
        "kv_bytes_per_token": p.kv_bytes_per_token,
        "dtype": p.dtype,
        "quantization": p.quantization,
        "vllm_args": list(p.vllm_args),
        "chat_template": p.chat_template,
        "tensor_parallel_allowed": p.tensor_parallel_allowed,
        "multi_node": p.multi_node,
        "gated": p.gated,
    }


def presets_json(presets: Iterable[ModelSpec]) -> str:
    return json.dumps([preset_dict(p) for p in presets], indent=2)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def plan_json(prepared) -> str:
    from kaito_runtime.vllm_command import format_command

    launch = prepared.launch
    payload = {
        "model": preset_dict(prepared.model),
        "inventory": _jsonable(prepared.inventory),
        "topology": _jsonable(prepared.topology),
        "plan": _jsonable(dataclasses.replace(prepared.plan, model=None)),
        "model_path": str(prepared.model_path),
        "token_source": prepared.token_source,
        "vllm": {
            "argv": list(launch.argv),
            "env": dict(launch.env),
            "unset_env": list(launch.unset_env),
            "warnings": list(launch.warnings),
            "command": format_command(launch),
        },
    }
    return json.dumps(payload, indent=2)


def plan_text(prepared) -> str:
    from kaito_runtime.vllm_command import format_command

    model, plan, node, topo = prepared.model, prepared.plan, prepared.inventory, prepared.topology
    lines = [f"Model     {model.name}"]
    if model.repo_id:
        lines.append(f"          {model.repo_id} @ {model.revision or 'main'}")
    elif model.local_path:
        lines.append(f"          folder {model.local_path}")
    lines.append(
        f"          {model.architecture}, weights {_gib(model.weights_bytes)}, context {model.max_context},"
        f" KV {model.kv_bytes_per_token} B/token"
    )
    if node.has_gpu:
        gpu = node.gpus[0]
        where = f"{node.gpu_count} x {gpu.name} ({_gib(gpu.total_bytes)})"
        if node.label:
            where += f" [{node.source}: {node.label}]"
    else:
        where = f"no GPU ({node.no_gpu_reason or 'none found'}), {node.host.cpu_count} CPU cores, {_gib(node.host.ram_available_bytes)} RAM available"
    lines.append(f"Node      {where}")
    if topo.multi_node:
        lines.append(f"Group     node {topo.node_rank} of {topo.nnodes}, leader {topo.leader_address}:{topo.master_port} ({topo.source})")
    layout = f"{plan.target.upper()}, tensor-parallel {plan.tensor_parallel_size} x pipeline-parallel {plan.pipeline_parallel_size}"
    if plan.data_parallel_size > 1:
        layout += f", {plan.data_parallel_size} replicas"
    lines.append(f"Layout    {layout}")
    if plan.memory:
        m = plan.memory
        lines.append(
            f"Per GPU   weights {_gib(m.weights)} + KV {_gib(m.kv_cache)} + overhead {_gib(m.overhead)}"
            f" = {_gib(m.weights + m.kv_cache + m.overhead)} of {_gib(m.usable)} usable"
            f" ({_gib(m.free)} free of {_gib(m.total)})"
        )
    if plan.gpu_memory_utilization is not None:
        lines.append(f"Memory    --gpu-memory-utilization {plan.gpu_memory_utilization:.2f}")
    if plan.cpu_kv_cache_gib is not None:
        lines.append(f"Memory    KV cache {plan.cpu_kv_cache_gib} GiB of RAM (VLLM_CPU_KVCACHE_SPACE)")
    context = "auto (vLLM fits it after profiling)" if plan.max_model_len_auto else str(plan.max_model_len)
    if plan.kv_cache_tokens:
        context += f"; KV cache holds ~{plan.kv_cache_tokens} tokens"
    lines.append(f"Context   --max-model-len {context}")
    if plan.decisions:
        lines.append("Why")
        for d in plan.decisions:
            lines.append(f"  - {d.topic}: {d.choice} ({d.reason})")
    for warning in prepared.launch.warnings:
        lines.append(f"Warning   {warning}")
    lines.append("Command")
    lines.append("  " + format_command(prepared.launch))
    return "\n".join(lines)


def doctor_text(node: NodeInventory, topo: Topology) -> str:
    from kaito_runtime.inventory import describe_inventory
    from kaito_runtime.topology import describe_topology

    return "\n".join([*describe_inventory(node), *describe_topology(topo)])


def doctor_json(node: NodeInventory, topo: Topology) -> str:
    return json.dumps({"inventory": _jsonable(node), "topology": _jsonable(topo)}, indent=2)

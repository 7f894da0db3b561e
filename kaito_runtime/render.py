"""Text and JSON views of presets, plans and the node, for the CLI. Pure: values in, strings out."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from kaito_runtime.types import format_gib
from kaito_runtime.launch.vllm_command import CPU_KV, ENVIRONMENT, PLAN
from kaito_runtime.types import GiB, ModelSpec, NodeInventory, Topology


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
                format_gib(p.weights_bytes),
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
        "parameter_count": p.parameter_count,
        "generated_from": p.generated_from,
        "store_uri": p.store_uri,  # an object store: where vLLM streams from
        "store_version": p.store_version,  # digest of the objects' ETags / generations
        "weights_figures": _figures_dict(p),
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
        "attention": dataclasses.asdict(p.attention),
        "load_format": p.load_format,
        "vocab_size": p.vocab_size,
        "hidden_size": p.hidden_size,
        "tie_word_embeddings": p.tie_word_embeddings,
        "num_experts": p.num_experts,
        "sliding_window": p.sliding_window,
        "sliding_window_layers": p.sliding_window_layers,
        "multimodal": p.multimodal,
        "notes": p.notes,
    }


def _figures_dict(p: ModelSpec) -> dict[str, Any] | None:
    f = p.weights_figures
    if f is None:
        return None
    return {
        "source": f.source,
        "files": f.files,
        "parameter_count": f.parameter_count,
        "parameters_by_dtype": dict(f.parameters_by_dtype),
        "bytes_by_dtype": dict(f.bytes_by_dtype),
        "stored_bytes": f.stored_bytes,
        "quantization": f.quantization,
        "quantization_bytes": f.quantization_bytes,
        "note": f.note,
    }


def figures_line(p: ModelSpec) -> str | None:
    """``parameters 1,235,814,400 (BF16 1,235,814,400), 2.30 GiB exact, from safetensors headers``."""
    f = p.weights_figures
    if f is None:
        return None
    if f.parameter_count is None:
        return f"weights {format_gib(f.stored_bytes)} from file sizes: {f.note}"
    by = ", ".join(f"{dtype} {count:,}" for dtype, count in f.parameters_by_dtype)
    quant = f", {f.quantization} ({f.quantization_bytes:,} B of scales/zeros)" if f.quantization else ""
    return (
        f"parameters {f.parameter_count:,} (stored {by}), {f.stored_bytes:,} B of tensors{quant}, "
        f"from the safetensors headers of {f.files} file(s)"
    )


def _dump(payload: Any, one_line: bool) -> str:
    """JSON output: indented for a reader, or one line (with --log-format json every line a
    collector reads is one JSON value)."""
    return json.dumps(payload, indent=None if one_line else 2)


def presets_json(presets: Iterable[ModelSpec], *, one_line: bool = False) -> str:
    return _dump([preset_dict(p) for p in presets], one_line)


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


def _effective(prepared, launch) -> dict:
    from kaito_runtime.launch import effective_settings

    return effective_settings(prepared.serve, prepared.plan, launch)


def plan_json(prepared, launch, *, one_line: bool = False) -> str:
    """``prepared``: api.PlannedLaunch; ``launch``: the VllmLaunch built for it."""
    from kaito_runtime.launch.vllm_command import display_argv, display_env, format_command

    payload = {
        "model": preset_dict(prepared.model),
        "fits": True,
        "inventory": _jsonable(prepared.inventory),
        "topology": {
            **_jsonable(prepared.topology),
            "role": "leader" if prepared.topology.is_leader else "worker",
            "group_store_port": prepared.topology.group_store_port if prepared.topology.multi_node else None,
        },
        "plan": _jsonable(dataclasses.replace(prepared.plan, model=None)),
        # What vLLM will get after the preset, --config and pass-through arguments: source None
        # means the plan's value stands.
        "effective": {flag: _jsonable(s) for flag, s in _effective(prepared, launch).items()},
        "model_path": str(prepared.model_path),
        "token_source": prepared.token_source,
        "warnings": list(prepared.warnings),
        "adapters": _jsonable(prepared.adapters),
        "vllm": {
            "argv": list(display_argv(launch)),  # an --api-key value is shown as ***
            "env": display_env(launch.env),  # an API key is shown as ***
            "unset_env": list(launch.unset_env),
            "warnings": list(launch.warnings),
            "command": format_command(launch),
        },
        "kaito": _kaito_features(launch),
    }
    return _dump(payload, one_line)


def _kaito_features(launch) -> dict:
    """KAITO's serving features as the launch has them: CPU KV offload (size and why), the 429
    guard, the drain on SIGTERM."""
    offload = launch.kv_offload
    return {
        "kv_offload": None if offload is None else {"size_gib": offload.size_gib, "reason": offload.reason},
        "rate_limit": launch.rate_limit,
        "shutdown_timeout": launch.shutdown_timeout,
    }


def kaito_lines(launch) -> list[str]:
    """The plan's lines for KAITO's serving features (none when the launch has none)."""
    lines = []
    if launch.kv_offload is not None:
        lines.append(f"KV offload {launch.kv_offload.describe()}")
    if launch.rate_limit:
        lines.append("429 guard  on: HTTP 429 when the queue is deeper than max-num-seqs (--disable-rate-limit turns it off)")
    if launch.shutdown_timeout is not None:
        drain = ("off: in-flight requests are aborted on SIGTERM" if launch.shutdown_timeout == 0
                 else f"in-flight requests get {launch.shutdown_timeout} s to finish on SIGTERM (--shutdown-timeout)")
        lines.append(f"Drain     {drain}")
    return lines


def model_lines(model: ModelSpec) -> list[str]:
    """The "Model" block of a plan: everything known about the model before any planning."""
    lines = [f"Model     {model.name}"]
    if model.repo_id:
        lines.append(f"          {model.repo_id} @ {model.revision or 'main'}")
    elif model.local_path:
        lines.append(f"          folder {model.local_path}")
    elif model.store_uri:
        lines.append(f"          streamed from {model.store_uri} (objects' version {model.store_version})")
    lines.append(
        f"          {model.architecture}, weights {format_gib(model.weights_bytes)}, context {model.max_context:,},"
        f" KV {model.kv_bytes_per_token:,} B/token"
    )
    figures = figures_line(model)
    if figures:
        lines.append(f"          {figures}")
    if model.generated_from:
        lines.extend(f"          {line}" for line in generated_figures(model))
    details = ["gated" if model.gated else "not gated", "multi-node" if model.multi_node else "single-node"]
    if model.generated_from:
        details.append(f"generated from {model.generated_from}")
    lines.append("          " + ", ".join(details))
    if model.vllm_args:
        lines.append(f"          vLLM args {' '.join(model.vllm_args)}")
    if model.generated_from and model.notes:
        lines.append(f"          {model.notes}")
    return lines


def generated_figures(model: ModelSpec) -> list[str]:
    """The figures a generated preset was made of (what a catalog entry would hold)."""
    att = model.attention
    if att.is_mla:
        geometry = f"attention MLA: {att.num_layers} layers, {att.num_attention_heads} heads, latent {att.kv_lora_rank} + rope {att.qk_rope_head_dim}"
    else:
        geometry = (f"attention {att.num_layers} layers, {att.num_attention_heads} heads, "
                    f"{att.num_kv_heads} KV heads x head_dim {att.head_dim}")
    budget = [f"dtype {model.dtype}", f"quantization {model.quantization or 'none'}"]
    if model.vocab_size:
        budget.append(f"vocab {model.vocab_size:,}")
    if model.hidden_size:
        budget.append(f"hidden {model.hidden_size:,}")
    if model.tie_word_embeddings:
        budget.append("tied embeddings")
    if model.num_experts:
        budget.append(f"{model.num_experts} experts")
    if model.sliding_window_layers:
        budget.append(f"sliding window {model.sliding_window:,} on {model.sliding_window_layers} of {att.num_layers} layers")
    if model.multimodal:
        budget.append("multimodal")
    budget.append(f"load format {model.load_format}")
    return [geometry, ", ".join(budget)]


def refusal_text(model: ModelSpec, warnings: Iterable[str] = ()) -> str:
    """What a dry run shows when the model does not fit: the model block (the error line that
    follows on stderr gives the numbers)."""
    return "\n".join([*model_lines(model), *(f"Warning   {w}" for w in warnings)])


def refusal_json(
    model: ModelSpec, error: str, token_source: str | None = None, warnings: Iterable[str] = (), *, one_line: bool = False
) -> str:
    payload = {
        "model": preset_dict(model),
        "fits": False,
        "error": error,
        "token_source": token_source,
        "warnings": list(warnings),
    }
    return _dump(payload, one_line)


def plan_text(prepared, launch) -> str:
    """``prepared``: api.PlannedLaunch; ``launch``: the VllmLaunch built for it. Values are the ones
    vLLM will get; one the config file or the pass-through arguments changed is marked with the
    plan's own value."""
    from kaito_runtime.launch.vllm_command import format_command

    model, plan, node, topo = prepared.model, prepared.plan, prepared.inventory, prepared.topology
    eff = _effective(prepared, launch)
    lines = model_lines(model)
    if node.has_gpu:
        gpu = node.gpus[0]
        where = f"{node.gpu_count} x {gpu.name} ({format_gib(gpu.total_bytes)})"
        if node.label:
            where += f" [{node.source}: {node.label}]"
    else:
        where = f"no GPU ({node.no_gpu_reason or 'none found'}), {node.host.cpu_count} CPU cores, {format_gib(node.host.ram_available_bytes)} RAM available"
    lines.append(f"Node      {where}")
    if topo.multi_node:
        rank = f"node {topo.node_rank} of {topo.nnodes}"
        if "node_rank" in topo.assumed:
            rank += " (rank assumed for planning)"
        leader = f"leader {topo.leader_address}:{topo.master_port}"
        if "leader_address" in topo.assumed:
            leader += " (placeholder: none given)"
        role = "leader" if topo.is_leader else "worker"
        lines.append(f"Group     {role}, {rank}, {leader}, group store port {topo.group_store_port}; from {topo.source}")
    tp, pp, dp = eff["tensor-parallel-size"], eff["pipeline-parallel-size"], eff["data-parallel-size"]
    layout = f"{plan.target.upper()}, tensor-parallel {tp.value}{tp.mark()} x pipeline-parallel {pp.value}{pp.mark()}"
    if dp.value != "1" or dp.overridden:
        layout += f", {dp.value} replicas{dp.mark()}"
    lines.append(f"Layout    {layout}")
    if plan.memory:
        m = plan.memory
        lines.append(
            f"Per GPU   weights {format_gib(m.weights)} + KV {format_gib(m.kv_cache)} + overhead {format_gib(m.overhead)}"
            f" = {format_gib(m.weights + m.kv_cache + m.overhead)} of {format_gib(m.usable)} usable"
            f" ({format_gib(m.free)} free of {format_gib(m.total)})"
            + (" (the plan's; overridden below)" if eff["gpu-memory-utilization"].overridden else "")
        )
    util = eff["gpu-memory-utilization"]
    if plan.gpu_memory_utilization is not None or util.overridden:
        lines.append(f"Memory    {util.describe()}")
    if CPU_KV in eff:
        kv = eff[CPU_KV]
        per_rank = f" per rank x {launch.cpu_ranks} ranks" if launch.cpu_ranks > 1 else ""
        by_flag = launch.sources.get(CPU_KV) not in (None, PLAN, ENVIRONMENT)
        where = "--kv-cache-memory-bytes" if by_flag else "VLLM_CPU_KVCACHE_SPACE"
        lines.append(f"Memory    KV cache {kv.value} of RAM{per_rank} ({where}){kv.mark()}")
    length = eff["max-model-len"]
    context = length.value
    if length.value == "auto" and not length.overridden:
        context = "auto (vLLM fits it after profiling)"
    context += length.mark()
    if plan.kv_cache_tokens:
        context += f"; KV cache holds ~{plan.kv_cache_tokens:,} tokens"
    lines.append(f"Context   --max-model-len {context}")
    names, host, port = eff["served-model-name"], eff["host"], eff["port"]
    if topo.is_leader:
        serve = f"{names.value}{names.mark()} on http://{host.value}:{port.value}/v1"
        if host.overridden or port.overridden:
            serve += f" (from {host.source if host.overridden else port.source}; the plan said {host.planned}:{port.planned})"
    else:
        serve = (f"none: headless worker (the leader serves); its launcher answers GET /health on "
                 f"http://{host.value}:{port.value}/health for the pod's probes")
    lines.append(f"Serve     {serve}")
    lines.extend(kaito_lines(launch))
    if prepared.adapters:
        lines.append("LoRA      " + ", ".join(f"{a.name} (rank {a.rank}, {a.path})" for a in prepared.adapters))
    if plan.decisions:
        lines.append("Why")
        for d in plan.decisions:
            lines.append(f"  - {d.topic}: {d.choice} ({d.reason})")
    for warning in [*prepared.warnings, *launch.warnings]:
        lines.append(f"Warning   {warning}")
    lines.append("Command")
    lines.append("  " + format_command(launch))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# The node: `kaito-run doctor`
# ------------------------------------------------------------------------------------------------

_INVENTORY_ORIGIN = {
    "nvml": "probed with NVML",
    "sku": "assumed from SKU {label}",
    "assumed": "assumed from --assume-gpus {label}",
    "none": "probed with NVML",
}


def _nvlink_line(inv: NodeInventory) -> str | None:
    if inv.gpu_count < 2:
        return None
    if any(g.mig for g in inv.gpus):
        return "NVLink: none between MIG slices (a CUDA process uses one slice)"
    if inv.nvlink:
        return "NVLink: all GPU pairs"
    if inv.nvlink_pairs:
        shown = ", ".join(f"{a}-{b}" for a, b in inv.nvlink_pairs)
        return f"NVLink: pairs {shown} only; the other pairs talk over PCIe"
    return "NVLink: none; GPUs talk over PCIe"


def describe_inventory(inv: NodeInventory) -> list[str]:
    """Human lines describing an inventory, for ``kaito-run doctor``."""
    lines: list[str] = []
    origin = _INVENTORY_ORIGIN[inv.source].format(label=inv.label)
    if inv.gpus:
        versions = []
        if inv.driver_version:
            versions.append(f"driver {inv.driver_version}")
        if inv.cuda_driver_version:
            versions.append(f"CUDA {inv.cuda_driver_version}")
        tail = f", {', '.join(versions)}" if versions else ""
        lines.append(f"GPUs: {inv.gpu_count} ({origin}{tail})")
        for g in inv.gpus:
            cc = f"{g.compute_capability[0]}.{g.compute_capability[1]}"
            kind = " [MIG slice]" if g.mig else ""
            lines.append(
                f"GPU {g.index}: {g.name}{kind}, {format_gib(g.total_bytes)} total, "
                f"{format_gib(g.free_bytes)} free, CC {cc}, uuid {g.uuid}"
            )
        link = _nvlink_line(inv)
        if link:
            lines.append(link)
    else:
        lines.append(f"No GPU: {inv.no_gpu_reason or 'none found'}")
    h = inv.host
    host = f"Host: {h.cpu_count} CPUs, {format_gib(h.ram_total_bytes)} RAM ({format_gib(h.ram_available_bytes)} available)"
    if h.disk_free_bytes is not None:
        host += f", {format_gib(h.disk_free_bytes)} free disk at {h.disk_path}"
    lines.append(host)
    lines.extend(f"Warning: {n}" for n in inv.notes)
    return lines


_TOPOLOGY_ORIGIN: dict[str, str] = {
    "default": "no multi-node settings found",
    "options": "from kaito-run options",
    "torchrun": "from the torchrun / torch elastic environment",
    "lws": "from the LeaderWorkerSet environment",
    "kaito-statefulset": "from the KAITO StatefulSet (POD_INDEX / hostname)",
}

_ASSUMED_TEXT = {"node_rank": "rank 0", "leader_address": "a placeholder leader address"}


def describe_topology(topo: Topology) -> list[str]:
    """Human lines for this node's place in its group, for ``kaito-run doctor``."""
    origin = _TOPOLOGY_ORIGIN[topo.source]
    if not topo.multi_node:
        return [f"Topology: single node ({origin})"]
    role = "leader" if topo.is_leader else "worker"
    lines = [
        f"Topology: node rank {topo.node_rank} of {topo.nnodes} nodes ({role}), "
        f"leader {topo.leader_address}:{topo.master_port} ({origin})"
    ]
    if topo.assumed:
        what = " and ".join(_ASSUMED_TEXT.get(a, a) for a in topo.assumed)
        lines.append(f"Assumed for planning: {what} (not given; a real launch needs them)")
    return lines


def doctor_text(node: NodeInventory, topo: Topology) -> str:
    return "\n".join([*describe_inventory(node), *describe_topology(topo)])


def doctor_json(node: NodeInventory, topo: Topology, *, one_line: bool = False) -> str:
    return _dump({"inventory": _jsonable(node), "topology": _jsonable(topo)}, one_line)

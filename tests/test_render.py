"""Text and JSON views built from hand-made values: plans, the node (doctor) and the preset list."""

from __future__ import annotations

import json
from pathlib import Path

from kaito_runtime import render
from kaito_runtime.node.topology import PLANNING_LEADER, resolve_topology
from kaito_runtime.types import format_bytes, format_gib
from kaito_runtime.types import (
    AttentionGeometry,
    Decision,
    GiB,
    GpuInfo,
    GpuMemoryBudget,
    HostInfo,
    LaunchPlan,
    ModelSpec,
    NodeInventory,
    Topology,
)
from kaito_runtime.launch.vllm_command import VllmLaunch

HOST = HostInfo(cpu_count=16, ram_total_bytes=64 * GiB, ram_available_bytes=48 * GiB)
MODEL = ModelSpec(
    name="test-8b",
    architecture="LlamaForCausalLM",
    weights_bytes=15 * GiB,
    max_context=131072,
    attention=AttentionGeometry(num_layers=32, num_attention_heads=32, num_kv_heads=8, head_dim=128),
    family="test",
    repo_id="org/test-8b",
    revision="a" * 40,
    params_billions=8.0,
    multi_node=True,
    gated=True,
)
SMALL = ModelSpec(
    name="tiny",
    architecture="LlamaForCausalLM",
    weights_bytes=512 * 1024**2,
    max_context=2048,
    attention=AttentionGeometry(num_layers=2, num_kv_heads=2, head_dim=64),
    local_path="/models/tiny",
)


def gpus(count: int, total_gib: float = 80.0, free_gib: float = 79.0) -> tuple[GpuInfo, ...]:
    return tuple(
        GpuInfo(
            index=i,
            name="NVIDIA H100 80GB HBM3",
            uuid=f"GPU-{i}",
            total_bytes=int(total_gib * GiB),
            free_bytes=int(free_gib * GiB),
            compute_capability=(9, 0),
        )
        for i in range(count)
    )


NO_GPU = NodeInventory(gpus=(), host=HOST, source="none", no_gpu_reason="NVML found no NVIDIA GPU on this node")


def prepared(model: ModelSpec, node: NodeInventory, plan: LaunchPlan, warnings: tuple[str, ...] = ()):
    from kaito_runtime.api import PhaseTimes, PlannedLaunch
    from kaito_runtime.launch import ServeOptions

    launch = VllmLaunch(  # what vLLM gets is what the plan said
        argv=("vllm", "serve", "/w/model", "--port", "5000"),
        env={"VLLM_USE_V1": "1"},
        unset_env=("HF_TOKEN",),
        warnings=warnings,
        served_model_names=(model.name,),
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        data_parallel_size=plan.data_parallel_size,
        gpu_memory_utilization=plan.gpu_memory_utilization,
        max_model_len=plan.max_model_len,
        cpu_kv_cache_gib=plan.cpu_kv_cache_gib,
    )
    view = PlannedLaunch(
        serve=ServeOptions(),
        model=model,
        inventory=node,
        topology=plan.topology,
        plan=plan,
        model_path=Path("/w/model"),
        times=PhaseTimes(),
    )
    return view, launch


def cpu_plan():
    plan = LaunchPlan(
        model=SMALL,
        target="cpu",
        topology=Topology(),
        max_model_len=2048,
        cpu_kv_cache_gib=4,
        decisions=(Decision("target", "CPU", "no GPU on this node"),),
    )
    return prepared(SMALL, NO_GPU, plan)


def gpu_plan(topo: Topology | None = None):
    node = NodeInventory(gpus=gpus(2), host=HOST, driver_version="550.54.15", cuda_driver_version="12.4",
                         nvlink=True, nvlink_pairs=((0, 1),))
    memory = GpuMemoryBudget(
        total=80 * GiB, free=79 * GiB, usable=72 * GiB, weights=int(7.5 * GiB), overhead=4 * GiB,
        kv_cache=int(60.5 * GiB), kv_bytes_per_token=65536,
    )
    plan = LaunchPlan(
        model=MODEL,
        target="gpu",
        topology=topo or Topology(),
        tensor_parallel_size=2,
        gpu_memory_utilization=0.9,
        max_model_len=131072,
        kv_cache_tokens=991232,
        memory=memory,
        gpus_per_node=2,
        decisions=(Decision("tensor-parallel", "2", "weights need both GPUs"),),
    )
    return prepared(MODEL, node, plan, warnings=("--foo overrides the plan",))


# --- units ----------------------------------------------------------------------------------------


def test_units() -> None:
    assert format_gib(int(79.6 * GiB)) == "79.6 GiB"
    assert format_gib(0) == "0.0 GiB"
    assert format_gib(None) == "-"
    assert format_bytes(int(1.25 * GiB)) == "1.25 GiB"
    assert format_bytes(512 * 1024**2) == "512.0 MiB"
    assert format_bytes(3 * 1024) == "3.0 KiB"
    assert format_bytes(10) == "10 B"


# --- plans ------------------------------------------------------------------------------------------


def test_plan_text_cpu() -> None:
    text = render.plan_text(*cpu_plan())
    lines = text.splitlines()
    assert lines[0] == "Model     tiny"
    assert lines[1] == "          folder /models/tiny"
    assert "weights 0.5 GiB, context 2,048" in lines[2]
    assert lines[3] == "          not gated, single-node"
    assert "Node      no GPU (NVML found no NVIDIA GPU on this node), 16 CPU cores, 48.0 GiB RAM available" in lines
    assert "Layout    CPU, tensor-parallel 1 x pipeline-parallel 1" in lines
    assert "Memory    KV cache 4 GiB of RAM (VLLM_CPU_KVCACHE_SPACE)" in lines
    assert "Context   --max-model-len 2048" in lines
    assert "  - target: CPU (no GPU on this node)" in lines
    assert not any(line.startswith(("Group", "Per GPU", "Warning")) for line in lines)
    assert lines[-2] == "Command"
    assert lines[-1] == "  env -u HF_TOKEN VLLM_USE_V1=1 vllm serve /w/model --port 5000"


def test_plan_text_gpu_shows_the_memory_budget() -> None:
    lines = render.plan_text(*gpu_plan()).splitlines()
    assert lines[1] == f"          org/test-8b @ {'a' * 40}"
    assert "Node      2 x NVIDIA H100 80GB HBM3 (80.0 GiB)" in lines
    assert "Layout    GPU, tensor-parallel 2 x pipeline-parallel 1" in lines
    assert (
        "Per GPU   weights 7.5 GiB + KV 60.5 GiB + overhead 4.0 GiB = 72.0 GiB of 72.0 GiB usable"
        " (79.0 GiB free of 80.0 GiB)"
    ) in lines
    assert "Memory    --gpu-memory-utilization 0.90" in lines
    assert "Context   --max-model-len 131072; KV cache holds ~991,232 tokens" in lines
    assert "Warning   --foo overrides the plan" in lines
    assert not any(line.startswith("Group") for line in lines)


def test_plan_text_multi_node_says_what_was_assumed() -> None:
    topo = resolve_topology({}, nnodes=2, planning_only=True)
    lines = render.plan_text(*gpu_plan(topo)).splitlines()
    group = [line for line in lines if line.startswith("Group")]
    assert group == [
        f"Group     leader, node 0 of 2 (rank assumed for planning), leader {PLANNING_LEADER}:29501"
        " (placeholder: none given), group store port 29502; from options"
    ]
    real = Topology(nnodes=2, node_rank=1, leader_address="10.0.0.1", source="lws")
    real_group = [line for line in render.plan_text(*gpu_plan(real)).splitlines() if line.startswith("Group")]
    assert real_group == ["Group     worker, node 1 of 2, leader 10.0.0.1:29501, group store port 29502; from lws"]


def test_plan_json_is_parseable_and_complete() -> None:
    topo = resolve_topology({}, nnodes=2, planning_only=True)
    data = json.loads(render.plan_json(*gpu_plan(topo)))
    assert data["model"]["name"] == "test-8b" and data["model"]["weights_gib"] == 15.0
    assert data["plan"]["model"] is None  # given once, under "model"
    assert data["plan"]["tensor_parallel_size"] == 2
    assert data["plan"]["memory"]["kv_cache"] == int(60.5 * GiB)
    assert data["topology"]["assumed"] == ["node_rank", "leader_address"]
    assert data["topology"]["leader_address"] == PLANNING_LEADER
    assert data["inventory"]["nvlink_pairs"] == [[0, 1]]
    assert data["vllm"]["argv"] == ["vllm", "serve", "/w/model", "--port", "5000"]
    assert data["vllm"]["unset_env"] == ["HF_TOKEN"]
    assert data["vllm"]["command"].startswith("env -u HF_TOKEN VLLM_USE_V1=1 vllm serve")
    assert data["model_path"] == "/w/model"


# --- doctor -----------------------------------------------------------------------------------------


def test_doctor_text_without_gpu() -> None:
    assert render.doctor_text(NO_GPU, Topology()).splitlines() == [
        "No GPU: NVML found no NVIDIA GPU on this node",
        "Host: 16 CPUs, 64.0 GiB RAM (48.0 GiB available)",
        "Topology: single node (no multi-node settings found)",
    ]


def test_doctor_text_with_gpus_nvlink_and_warnings() -> None:
    node = NodeInventory(
        gpus=gpus(4), host=HostInfo(8, 32 * GiB, 30 * GiB, disk_free_bytes=100 * GiB, disk_path="/w"),
        driver_version="550.54.15", cuda_driver_version="12.4", nvlink_pairs=((0, 1), (2, 3)),
        notes=("GPU 3 is busy",),
    )
    lines = render.doctor_text(node, Topology()).splitlines()
    assert lines[0] == "GPUs: 4 (probed with NVML, driver 550.54.15, CUDA 12.4)"
    assert lines[1] == "GPU 0: NVIDIA H100 80GB HBM3, 80.0 GiB total, 79.0 GiB free, CC 9.0, uuid GPU-0"
    assert lines[5] == "NVLink: pairs 0-1, 2-3 only; the other pairs talk over PCIe"
    assert lines[6] == "Host: 8 CPUs, 32.0 GiB RAM (30.0 GiB available), 100.0 GiB free disk at /w"
    assert lines[7] == "Warning: GPU 3 is busy"


def test_doctor_nvlink_line_for_mig_and_single_gpu() -> None:
    mig = NodeInventory(gpus=tuple(GpuInfo(i, "MIG 1g.10gb", f"MIG-{i}", 10 * GiB, 10 * GiB, (8, 0), mig=True)
                                   for i in range(2)), host=HOST)
    assert "NVLink: none between MIG slices (a CUDA process uses one slice)" in render.describe_inventory(mig)
    assert "GPU 0: MIG 1g.10gb [MIG slice], 10.0 GiB total" in render.describe_inventory(mig)[1]
    one = NodeInventory(gpus=gpus(1), host=HOST)
    assert not any(line.startswith("NVLink") for line in render.describe_inventory(one))


def test_doctor_topology_lines() -> None:
    env = {"LWS_LEADER_ADDRESS": "l-0.l", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}
    assert render.describe_topology(resolve_topology(env)) == [
        "Topology: node rank 1 of 2 nodes (worker), leader l-0.l:29501 (from the LeaderWorkerSet environment)"
    ]
    leader = resolve_topology({}, nnodes=2, node_rank=0, leader_address="10.0.0.1")
    assert "(leader)" in render.describe_topology(leader)[0]
    assumed = render.describe_topology(resolve_topology({}, nnodes=2, planning_only=True))
    assert assumed[1] == (
        "Assumed for planning: rank 0 and a placeholder leader address (not given; a real launch needs them)"
    )


def test_doctor_json() -> None:
    node = NodeInventory(gpus=gpus(2), host=HOST, source="sku", label="Standard_X", nvlink=True,
                         nvlink_pairs=((0, 1),))
    data = json.loads(render.doctor_json(node, Topology()))
    assert data["inventory"]["label"] == "Standard_X"
    assert data["inventory"]["gpus"][1]["uuid"] == "GPU-1"
    assert data["inventory"]["gpus"][0]["compute_capability"] == [9, 0]
    assert data["topology"] == {
        "nnodes": 1, "node_rank": 0, "leader_address": None, "master_port": 29501, "source": "default", "assumed": []
    }
    assert render.describe_inventory(node)[0] == "GPUs: 2 (assumed from SKU Standard_X)"


# --- presets ---------------------------------------------------------------------------------------


def test_presets_table() -> None:
    lines = render.presets_table([MODEL, SMALL]).splitlines()
    assert lines[0].split() == ["PRESET", "FAMILY", "PARAMS", "WEIGHTS", "CONTEXT", "MULTI-NODE", "GATED"]
    assert lines[1].split() == ["test-8b", "test", "8B", "15.0", "GiB", "128k", "yes", "yes"]
    assert lines[2].split() == ["tiny", "-", "-", "0.5", "GiB", "2k", "no", "no"]
    # columns line up under their headings
    at = lines[0].index("WEIGHTS")
    assert lines[1][at:].startswith("15.0 GiB") and lines[2][at:].startswith("0.5 GiB")


def test_presets_json_round_trips() -> None:
    data = json.loads(render.presets_json([MODEL, SMALL]))
    assert [d["name"] for d in data] == ["test-8b", "tiny"]
    first = data[0]
    assert first == render.preset_dict(MODEL) | {"vllm_args": []}
    assert first["kv_bytes_per_token"] == MODEL.kv_bytes_per_token == 131072
    assert first["revision"] == "a" * 40 and first["gated"] is True and first["weights_gib"] == 15.0
    assert json.loads(json.dumps(data)) == data


def test_plan_json_never_shows_an_api_key(tmp_path):
    from click.testing import CliRunner

    from kaito_runtime.cli import main

    result = CliRunner().invoke(
        main,
        ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json",
         "--", "--api-key", "sk-plan-json-secret"],
    )
    assert result.exit_code == 0, result.output
    assert "sk-plan-json-secret" not in result.output
    vllm = json.loads(result.output)["vllm"]
    assert "--api-key" not in vllm["argv"]  # moved to the child's environment
    assert vllm["env"]["VLLM_API_KEY"] == "***" and "VLLM_API_KEY='***'" in vllm["command"]


# --- what vLLM will get, when it is not what the plan said ---------------------------------------


def test_plan_text_shows_effective_values_and_marks_what_overrode_the_plan() -> None:
    import dataclasses

    view, launch = gpu_plan()
    launch = dataclasses.replace(
        launch, max_model_len=300000, tensor_parallel_size=1, gpu_memory_utilization=0.5, port=6000,
        served_model_names=("cfgname",),
        sources={"max-model-len": "pass-through", "tensor-parallel-size": "pass-through", "port": "pass-through",
                 "gpu-memory-utilization": "--config", "served-model-name": "--config"},
    )
    lines = render.plan_text(view, launch).splitlines()
    assert "Layout    GPU, tensor-parallel 1 (from pass-through; the plan said 2) x pipeline-parallel 1" in lines
    assert "Memory    --gpu-memory-utilization 0.50 (from --config; the plan said 0.90)" in lines
    assert (
        "Context   --max-model-len 300000 (from pass-through; the plan said 131072); KV cache holds ~991,232 tokens"
        in lines
    )
    assert (
        "Serve     cfgname (from --config; the plan said test-8b) on http://0.0.0.0:6000/v1"
        " (from pass-through; the plan said 0.0.0.0:5000)"
    ) in lines
    assert any(line.startswith("Per GPU") and line.endswith("(the plan's; overridden below)") for line in lines)


def test_plan_text_without_overrides_marks_nothing() -> None:
    text = render.plan_text(*gpu_plan())
    assert "the plan said" not in text and "overridden" not in text
    assert "Serve     test-8b on http://0.0.0.0:5000/v1" in text.splitlines()


def test_plan_json_has_the_effective_values_and_fits() -> None:
    payload = json.loads(render.plan_json(*gpu_plan()))
    assert payload["fits"] is True
    assert payload["effective"]["tensor-parallel-size"] == {
        "flag": "tensor-parallel-size", "value": "2", "planned": "2", "source": None,
    }


def test_the_model_block_says_gated_and_the_presets_vllm_args() -> None:
    import dataclasses

    lines = render.model_lines(dataclasses.replace(MODEL, vllm_args=("--tool-call-parser", "x")))
    assert lines[2] == "          LlamaForCausalLM, weights 15.0 GiB, context 131,072, KV 131,072 B/token"
    assert lines[3] == "          gated, multi-node"
    assert lines[4] == "          vLLM args --tool-call-parser x"


def test_a_refusal_shows_the_model_and_its_warnings() -> None:
    text = render.refusal_text(MODEL, ["org/test-8b is gated: ..."])
    assert text.splitlines()[0] == "Model     test-8b" and text.splitlines()[-1] == "Warning   org/test-8b is gated: ..."
    payload = json.loads(render.refusal_json(MODEL, "test-8b does not fit. Fix: more GPUs.", None, ["w"]))
    assert payload["fits"] is False and payload["error"].startswith("test-8b does not fit")
    assert payload["model"]["name"] == "test-8b" and payload["warnings"] == ["w"]


def test_a_headless_worker_serves_only_its_launchers_health_endpoint() -> None:
    worker = Topology(nnodes=2, node_rank=1, leader_address="10.0.0.1", source="lws")
    lines = render.plan_text(*gpu_plan(worker)).splitlines()
    serve = [line for line in lines if line.startswith("Serve")]
    assert serve == ["Serve     none: headless worker (the leader serves); its launcher answers GET /health "
                     "on http://0.0.0.0:5000/health for the pod's probes"]
    assert "/v1" not in "\n".join(serve)


def test_the_cpu_memory_line_shows_what_each_rank_gets() -> None:
    import dataclasses

    view, launch = cpu_plan()
    one = render.plan_text(view, launch).splitlines()
    assert "Memory    KV cache 4 GiB of RAM (VLLM_CPU_KVCACHE_SPACE)" in one
    # TP 2 on CPU: each rank gets its share, the line says so (not the plan's total)
    two = dataclasses.replace(launch, cpu_kv_cache_gib=2.0, cpu_ranks=2, tensor_parallel_size=2)
    assert "Memory    KV cache 2 GiB of RAM per rank x 2 ranks (VLLM_CPU_KVCACHE_SPACE)" in render.plan_text(
        view, two
    ).splitlines()
    flag = dataclasses.replace(launch, cpu_kv_cache_gib=100.0, sources={"cpu-kv-cache": "pass-through"})
    assert (
        "Memory    KV cache 100 GiB of RAM (--kv-cache-memory-bytes) (from pass-through; the plan said 4 GiB)"
        in render.plan_text(view, flag).splitlines()
    )

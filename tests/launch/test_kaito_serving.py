"""KAITO's serving features as vLLM flags (launch/kaito_serving.py): CPU KV offload sized from the
container's memory (cgroup v1 and v2, node/container_memory.py), KAITO's exclusions, the 429
guard's --middleware, the drain's --shutdown-timeout and the prefill/decode role. Units on the
argv; the real-vLLM behaviour is in tests/e2e/test_kaito.py."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from kaito_runtime.launch.kaito_serving import (
    NIXL_TRANSFER_CONFIG,
    RATE_LIMIT_MIDDLEWARE,
    KaitoServing,
    kv_offload,
    shutdown_timeout_for,
)
from kaito_runtime.launch.vllm_command import CommandInputs, build_vllm_command
from tests.support.steps import container_memory
from kaito_runtime.types import GiB, PlanOverrides
from tests.support.planner_helpers import plan_launch
from tests.launch.test_vllm_command import CATALOG, cpu_plan, group, llama70b_plan, node

FREE = 100 * GiB
SERVING = KaitoServing(kv_offload_utilization=0.5, container_free_bytes=FREE, container_memory_source="100 GiB free (cgroup v2 test)",
                       grace_seconds=30.0)


def build(plan, kaito=SERVING, extra=(), config=None, env=None):
    inputs = CommandInputs(model_path="/w", extra_args=extra, config_args=config, base_env=env or {}, kaito=kaito)
    return build_vllm_command(plan, inputs)


def value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


# -- CPU KV offload ------------------------------------------------------------------------------


def test_offload_is_half_the_containers_free_memory_in_total_over_tp_ranks():
    plan = llama70b_plan()
    assert plan.tensor_parallel_size > 1
    launch = build(plan)
    assert value(launch.argv, "--kv-offloading-size") == "50"  # 0.5 x 100 GiB, the total, not per rank
    assert "--kv-transfer-config" not in launch.argv  # vLLM's native backend sets its own connector
    assert launch.kv_offload.size_gib == 50 and "cgroup v2 test" in launch.kv_offload.describe()


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        (("--kv-offloading-size", "8"), "yours is used"),
        (("--kv-transfer-config", '{"kv_connector":"LMCacheConnectorV1","kv_role":"kv_both"}'), "overwrite its connector"),
    ],
)
def test_offload_never_overrides_the_users_flags(extra, why):
    launch = build(llama70b_plan(), extra=extra)
    assert launch.argv.count(extra[0]) == 1 and value(launch.argv, extra[0]) == extra[1]
    assert launch.kv_offload.size_gib is None and why in launch.kv_offload.reason


def test_offload_from_the_config_file_vllm_section_is_the_users_too():
    launch = build(llama70b_plan(), config={"kv-offloading-size": 4})
    assert value(launch.argv, "--kv-offloading-size") == "4" and launch.argv.count("--kv-offloading-size") == 1


def _hybrid(plan):
    model = replace(plan.model, sliding_window=1024, sliding_window_layers=plan.model.attention.num_layers // 2)
    return replace(plan, model=model)


@pytest.mark.parametrize(
    ("plan_of", "serving", "why"),
    [
        (lambda: cpu_plan(), SERVING, "CPU target"),
        (lambda: llama70b_plan(), replace(SERVING, inference_role="prefill"), "prefill pod"),
        (lambda: llama70b_plan(), replace(SERVING, mig=True), "MIG"),
        (lambda: replace(llama70b_plan(), data_parallel_size=2), SERVING, "data-parallel"),
        (lambda: plan_launch(CATALOG.get("llama-3.3-70b-instruct"), node(2), group(2)), SERVING, "across nodes"),
        (lambda: _hybrid(llama70b_plan()), SERVING, "hybrid KV cache"),
        (lambda: replace(llama70b_plan(), model=replace(llama70b_plan().model, architecture="Qwen3NextForCausalLM")),
         SERVING, "hybrid KV cache"),
        (lambda: llama70b_plan(), replace(SERVING, kv_offload_utilization=0.0), "0 or unset"),
    ],
)
def test_kaitos_exclusions_turn_offload_off_with_the_reason(plan_of, serving, why):
    plan = plan_of()
    decision = kv_offload(plan, serving, set())
    assert decision.size_gib is None and why in decision.reason
    assert "--kv-offloading-size" not in build(plan, serving).argv


def test_offload_is_absent_without_kaito_features():
    assert "--kv-offloading-size" not in build(llama70b_plan(), kaito=None).argv


# -- the container's memory, cgroup v2 and v1 -----------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_minus_usage_without_inactive_page_cache(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "kubepods" / "pod1" / "memory.max", str(64 * GiB))
    _write(root / "kubepods" / "pod1" / "memory.current", str(20 * GiB))
    _write(root / "kubepods" / "pod1" / "memory.stat", f"anon 1\ninactive_file {4 * GiB}\n")
    _write(root / "kubepods" / "memory.max", "max")
    proc = tmp_path / "cgroup"
    _write(proc, "0::/kubepods/pod1\n")
    found = container_memory(root, proc, host_available=500 * GiB)
    assert found.limit_bytes == 64 * GiB and found.used_bytes == 16 * GiB
    assert found.available_bytes == 48 * GiB and "cgroup v2" in found.source


def test_cgroup_v2_takes_the_tightest_limit_on_the_way_up(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "memory\n")
    _write(root / "a" / "memory.max", str(32 * GiB))
    _write(root / "a" / "b" / "memory.max", "max")
    _write(root / "a" / "b" / "memory.current", str(2 * GiB))
    proc = tmp_path / "cgroup"
    _write(proc, "0::/a/b\n")
    assert container_memory(root, proc, host_available=500 * GiB).available_bytes == 30 * GiB


def test_cgroup_v1_limit_and_usage(tmp_path):
    root = tmp_path / "cg"
    mem = root / "memory" / "docker" / "abc"
    _write(mem / "memory.limit_in_bytes", str(16 * GiB))
    _write(mem / "memory.usage_in_bytes", str(6 * GiB))
    _write(mem / "memory.stat", f"cache 1\ntotal_inactive_file {2 * GiB}\n")
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")  # v1's "no limit"
    proc = tmp_path / "cgroup"
    _write(proc, "4:memory:/docker/abc\n0::/\n")
    found = container_memory(root, proc, host_available=500 * GiB)
    assert found.available_bytes == 12 * GiB and "cgroup v1" in found.source


def test_no_limit_means_the_hosts_available_ram_and_a_limit_above_it_is_capped(tmp_path):
    root = tmp_path / "cg"
    _write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712")
    proc = tmp_path / "cgroup"
    _write(proc, "4:memory:/\n")
    found = container_memory(root, proc, host_available=7 * GiB)
    assert found.available_bytes == 7 * GiB and found.limit_bytes is None and "no cgroup memory limit" in found.source
    _write(root / "memory" / "memory.limit_in_bytes", str(64 * GiB))
    assert container_memory(root, proc, host_available=7 * GiB).available_bytes == 7 * GiB


def test_this_machines_own_cgroup_reads_without_error():
    found = container_memory()
    assert found.available_bytes > 0 and found.source


# -- the 429 guard, the drain, the role ----------------------------------------------------------


def test_the_rate_limit_middleware_goes_beside_the_users_and_learns_max_num_seqs():
    launch = build(cpu_plan(), extra=("--middleware", "my.mod.Thing", "--max-num-seqs", "3"))
    pairs = [launch.argv[i + 1] for i, token in enumerate(launch.argv) if token == "--middleware"]
    assert pairs == ["my.mod.Thing", RATE_LIMIT_MIDDLEWARE]
    assert launch.env["KAITO_RATE_LIMIT_MAX_NUM_SEQS"] == "3" and launch.rate_limit


def test_the_rate_limit_can_be_turned_off():
    launch = build(cpu_plan(), kaito=replace(SERVING, rate_limit=False))
    assert "--middleware" not in launch.argv and "KAITO_RATE_LIMIT_MAX_NUM_SEQS" not in launch.env


@pytest.mark.parametrize(("grace", "timeout"), [(30, 25), (90, 85), (8, 6), (2, 1), (0.5, 0), (0, 0)])
def test_shutdown_timeout_leaves_vllm_time_to_tear_down_within_the_grace_period(grace, timeout):
    assert shutdown_timeout_for(grace) == timeout
    assert shutdown_timeout_for(grace) <= grace


def test_the_drain_follows_the_grace_period_unless_the_user_sets_it():
    assert value(build(cpu_plan()).argv, "--shutdown-timeout") == "25"
    launch = build(cpu_plan(), extra=("--shutdown-timeout", "7"))
    assert launch.argv.count("--shutdown-timeout") == 1 and launch.shutdown_timeout == 7
    launch = build(cpu_plan(), config={"shutdown-timeout": 3})
    assert value(launch.argv, "--shutdown-timeout") == "3" and launch.argv.count("--shutdown-timeout") == 1


@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_role_gets_kaitos_nixl_config_unless_the_user_gave_one(role):
    launch = build(llama70b_plan(), kaito=replace(SERVING, inference_role=role))
    assert json.loads(value(launch.argv, "--kv-transfer-config")) == json.loads(NIXL_TRANSFER_CONFIG)
    assert json.loads(NIXL_TRANSFER_CONFIG)["kv_load_failure_policy"] == "fail"
    mine = '{"kv_connector":"P2pNcclConnector","kv_role":"kv_producer"}'
    launch = build(llama70b_plan(), kaito=replace(SERVING, inference_role=role), extra=("--kv-transfer-config", mine))
    assert launch.argv.count("--kv-transfer-config") == 1 and value(launch.argv, "--kv-transfer-config") == mine


def test_kv_events_config_passes_through_untouched():
    events = '{"enable_kv_cache_events":true}'
    launch = build(llama70b_plan(), extra=("--kv-events-config", events))
    assert value(launch.argv, "--kv-events-config") == events

"""kaito_runtime.launch: the vLLM check, the child's environment and the start line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from kaito_runtime import launch

from kaito_runtime.launch import vllm_install
from tests.support.steps import load_catalog
from kaito_runtime.errors import VllmNotInstalledError
from kaito_runtime.launch import ServeOptions
from kaito_runtime.types import LaunchPlan, Topology
from kaito_runtime.launch.vllm_command import VllmLaunch

LAUNCH = VllmLaunch(
    argv=("vllm", "serve", "/w/my model", "--port", "5000"),
    env={"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"},
    unset_env=("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"),
)
INSTALL = vllm_install.VllmInstall(version="0.32.0", cpu_build=False, entrypoint=("vllm", "serve"), model_as_flag=False)
MODEL = load_catalog().get("phi-4-mini-instruct")
log = logging.getLogger("kaito_runtime")


def test_child_environment_drops_the_token_and_adds_ours():
    env = {"HF_TOKEN": "hf_x", "PATH": "/bin", "VLLM_HOST_IP": "10.0.0.9"}
    child = launch.child_environment(LAUNCH, env, {"GLOO_SOCKET_IFNAME": "eth1"})
    assert "HF_TOKEN" not in child and child["PATH"] == "/bin" and child["HF_HUB_OFFLINE"] == "1"
    assert child["GLOO_SOCKET_IFNAME"] == "eth1" and child["VLLM_HOST_IP"] == "10.0.0.9"


def test_start_line_names_what_we_set_and_what_we_remove():
    line = launch.start_line(LAUNCH, {"VLLM_HOST_IP": "10.0.0.2"})
    assert line.startswith("HF_HUB_OFFLINE=1 VLLM_HOST_IP=10.0.0.2 VLLM_NO_USAGE_STATS=1 vllm serve '/w/my model'")
    assert line.endswith("(without HF_TOKEN, HUGGING_FACE_HUB_TOKEN)")


def test_installed_vllm_refuses_a_missing_vllm(monkeypatch):
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: None)
    with pytest.raises(VllmNotInstalledError) as caught:
        launch.installed_vllm(MODEL, Topology(), log)
    assert sys.executable in caught.value.message and caught.value.exit_code == 20


def test_installed_vllm_checks_multi_node_support_only_for_a_group(monkeypatch):
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: INSTALL)
    monkeypatch.setattr(vllm_install, "supports_multinode_mp", lambda install: False)
    assert launch.installed_vllm(MODEL, Topology(), log) is INSTALL
    group = Topology(nnodes=2, node_rank=0, leader_address="l")
    with pytest.raises(VllmNotInstalledError, match="across nodes"):
        launch.installed_vllm(MODEL, group, log)


def test_installed_vllm_warns_about_an_unlisted_architecture(monkeypatch, caplog):
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: INSTALL)
    monkeypatch.setattr(vllm_install, "supports_architecture", lambda install, arch: False)
    with caplog.at_level(logging.WARNING, logger="kaito_runtime"):
        launch.installed_vllm(MODEL, Topology(), log)
    assert f"does not list architecture {MODEL.architecture}" in caplog.text


# --- effective settings ---------------------------------------------------------------------------


def _plan(**changes) -> LaunchPlan:
    fields = {"model": MODEL, "target": "gpu", "topology": Topology(), "tensor_parallel_size": 2,
              "gpu_memory_utilization": 0.9, "max_model_len": 16384}
    fields.update(changes)
    return LaunchPlan(**fields)


def test_effective_settings_name_the_layer_that_changed_each_value():
    plan = _plan()
    serve = ServeOptions(extra_args=("--max_model_len=8192", "--port", "6000"))
    config = {"--max-model-len": 4096, "gpu-memory-utilization": 0.5, "served-model-name": ["a", "b"]}
    built = launch.build_launch(serve, plan, Path("/m"), {}, None, config)
    got = launch.effective_settings(serve, plan, built)
    assert got["max-model-len"].describe() == "--max-model-len 8192 (from pass-through; the plan said 16384)"
    assert got["gpu-memory-utilization"].describe() == "--gpu-memory-utilization 0.50 (from --config; the plan said 0.90)"
    assert got["served-model-name"].value == "a b" and got["served-model-name"].source == "--config"
    assert got["port"].source == "pass-through" and got["host"].source is None
    assert not got["tensor-parallel-size"].overridden and got["tensor-parallel-size"].describe() == "--tensor-parallel-size 2"


def test_a_value_that_differs_without_a_user_layer_is_not_called_an_override():
    # The plan's "auto" handed to a vLLM without it becomes the planner's estimate: not a user's doing.
    plan = _plan(max_model_len=None, max_model_len_auto=True)
    built = VllmLaunch(argv=("vllm",), tensor_parallel_size=2, gpu_memory_utilization=0.9, max_model_len=12288)
    got = launch.effective_settings(ServeOptions(), plan, built)
    assert got["max-model-len"].value == "12288" and got["max-model-len"].planned == "auto"
    assert not got["max-model-len"].overridden and got["max-model-len"].mark() == ""


def test_a_short_pass_through_flag_counts_as_its_long_name():
    serve = ServeOptions(extra_args=("-tp", "4"))
    built = launch.build_launch(serve, _plan(), Path("/m"), {}, None)
    got = launch.effective_settings(serve, _plan(), built)
    assert got["tensor-parallel-size"].mark() == " (from pass-through; the plan said 2)"

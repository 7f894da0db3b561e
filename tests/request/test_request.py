"""kaito_runtime.request: the request value and the defaults read from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito_runtime import request
from kaito_runtime.errors import InputError
from kaito_runtime.request import RuntimeRequest, check_join

REPO = Path(__file__).resolve().parents[2]


def test_default_weights_dir_prefers_the_explicit_variable(tmp_path):
    assert request.default_weights_dir({"KAITO_WEIGHTS_DIR": str(tmp_path / "x")}) == tmp_path / "x"


def test_default_weights_dir_needs_the_workspace_weights_folder_itself(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setattr(request, "CONTAINER_WEIGHTS_DIR", workspace / "weights")
    env = {"HF_HOME": str(tmp_path / "hf")}
    # /workspace alone (common on cloud dev boxes) is not a KAITO container.
    assert request.default_weights_dir(env) == tmp_path / "hf" / "kaito-weights"
    (workspace / "weights").mkdir()
    assert request.default_weights_dir(env) == workspace / "weights"


def test_an_explicit_weights_dir_wins_over_the_environment(tmp_path):
    env = {"KAITO_WEIGHTS_DIR": str(tmp_path / "env")}
    assert request.weights_dir_of(RuntimeRequest(weights_dir=tmp_path / "flag"), env) == tmp_path / "flag"
    assert request.weights_dir_of(RuntimeRequest(), env) == tmp_path / "env"


def test_offline_from_the_flag_or_either_variable():
    assert not request.is_offline(RuntimeRequest(), {"HF_HUB_OFFLINE": "0"})
    assert request.is_offline(RuntimeRequest(offline=True), {})
    assert request.is_offline(RuntimeRequest(), {"HF_HUB_OFFLINE": "1"})
    assert request.is_offline(RuntimeRequest(), {"TRANSFORMERS_OFFLINE": "True"})


def test_a_local_folder_is_told_from_a_repo_id(tmp_path):
    assert request.uses_local_folder(RuntimeRequest(model=str(REPO / "models" / "tiny-llama")))
    assert request.uses_local_folder(RuntimeRequest(model="./not-there-yet"))
    assert not request.uses_local_folder(RuntimeRequest(model="org/name"))
    assert not request.uses_local_folder(RuntimeRequest(preset="phi-4-mini-instruct"))


def test_planning_only_for_a_dry_run_or_described_hardware():
    assert not RuntimeRequest().planning_only
    assert RuntimeRequest(dry_run=True).planning_only
    assert RuntimeRequest(sku="Standard_NC24ads_A100_v4").planning_only
    assert RuntimeRequest(assume_gpus="1xA100-80GB").planning_only


def test_chat_template_dir_flag_then_variable_then_default():
    assert request.chat_template_dir_of(RuntimeRequest(chat_template_dir="/a"), {"KAITO_CHAT_TEMPLATE_DIR": "/b"}) == "/a"
    assert request.chat_template_dir_of(RuntimeRequest(), {"KAITO_CHAT_TEMPLATE_DIR": "/b"}) == "/b"
    assert request.chat_template_dir_of(RuntimeRequest(), {}) == request.DEFAULT_CHAT_TEMPLATE_DIR


def test_a_join_worker_names_no_model_of_its_own():
    check_join(RuntimeRequest(join=True, node_rank=1))
    for given in ({"model": "models/tiny"}, {"preset": "phi-3-mini-4k-instruct"}, {"extra_vllm_args": ("--enforce-eager",)}):
        with pytest.raises(InputError) as caught:
            check_join(RuntimeRequest(join=True, **given))
        assert "--join learns the model and its settings from the leader" in caught.value.message


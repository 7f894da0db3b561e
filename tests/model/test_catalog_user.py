"""--export-preset prints a generated preset as a catalog file; --catalog-dir / KAITO_CATALOG_DIR
loads such files beside the built-in catalog, validated by the same schema. Exported and loaded
back, a hub model plans exactly as it did from the hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.errors import CatalogError
from kaito_runtime.model.catalog import export_yaml, load_catalog
from tests.conftest import GRANTED_TOKEN
from tests.support.model_fixtures import FIXTURES

REPO = Path(__file__).resolve().parents[2]


def _env(hub, tmp_path, token=None, **extra):
    env = {"HF_ENDPOINT": hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w"), "HF_HOME": str(tmp_path / "hf")}
    if token:
        env["HF_TOKEN"] = token
    return env | extra


def _comparable(stdout: str) -> dict:
    payload = json.loads(stdout)
    return {"plan": payload["plan"], "argv": payload["vllm"]["argv"], "kv": payload["model"]["kv_bytes_per_token"],
            "weights": payload["model"]["weights_bytes"], "path": payload["model_path"]}


@pytest.mark.parametrize("key", ["llama", "qwen3", "moe", "gemma3", "mla", "awq", "fp8", "mistral", "bin-only"])
@pytest.mark.parametrize("gpus", ["8xH100-80GB", "1xA10-24GB"])
def test_an_exported_preset_loaded_from_a_catalog_folder_plans_the_same(fixture_hub, tmp_path, key, gpus):
    fx = FIXTURES[key]
    env = _env(fixture_hub, tmp_path, GRANTED_TOKEN if fx.gated else None)
    runner = CliRunner()
    exported = runner.invoke(main, ["--preset", fx.repo_id, "--export-preset"], env=env)
    assert exported.exit_code == 0, exported.output
    family = yaml.safe_load(exported.stdout)["family"]
    entry = yaml.safe_load(exported.stdout)["presets"][0]
    assert entry["revision"] == fixture_hub.commit_of(fx.repo_id)  # pinned to the resolved commit
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / f"{family}.yaml").write_text(exported.stdout)

    plan_args = ["--dry-run", "-o", "json", "--assume-gpus", gpus]
    from_hub = runner.invoke(main, ["--preset", fx.repo_id, *plan_args], env=env)
    by_name = runner.invoke(main, ["--preset", entry["name"], "--catalog-dir", str(catalog), *plan_args], env=env)
    by_env = runner.invoke(main, ["--preset", entry["name"], *plan_args], env=env | {"KAITO_CATALOG_DIR": str(catalog)})
    for result in (from_hub, by_name, by_env):
        assert result.exit_code in (0, 2), result.output
    assert from_hub.exit_code == by_name.exit_code == by_env.exit_code
    if from_hub.exit_code == 0:
        assert _comparable(by_name.stdout) == _comparable(from_hub.stdout) == _comparable(by_env.stdout)
        assert json.loads(by_name.stdout)["model"]["generated_from"] is None  # now a catalog preset
    else:
        assert by_name.stderr.splitlines()[-1] == from_hub.stderr.splitlines()[-1]


def test_the_repo_id_of_a_catalog_folder_preset_is_that_preset(fixture_hub, tmp_path):
    env = _env(fixture_hub, tmp_path)
    runner = CliRunner()
    exported = runner.invoke(main, ["--preset", "Qwen/Qwen3-0.6B", "--export-preset"], env=env).stdout
    (tmp_path / "qwen.yaml").write_text(exported.replace("name: qwen3-0.6b", "name: team-qwen3"))
    result = runner.invoke(main, ["--preset", "Qwen/Qwen3-0.6B", "--catalog-dir", str(tmp_path), "--dry-run", "-o", "json",
                                  "--assume-gpus", "1xA100-80GB"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["name"] == "team-qwen3"
    listed = runner.invoke(main, ["--list-presets"], env=env | {"KAITO_CATALOG_DIR": str(tmp_path)})
    assert "team-qwen3" in listed.stdout and "phi-4-mini-instruct" in listed.stdout


@pytest.mark.parametrize("preset", load_catalog().names())
def test_every_built_in_preset_exports_to_an_entry_that_loads_back_equal(tmp_path, preset):
    spec = load_catalog().get(preset)
    text = export_yaml(spec, origin="test")
    (tmp_path / f"{spec.family}.yaml").write_text(text)
    assert load_catalog(tmp_path).get(preset) == spec


def test_a_name_colliding_with_a_built_in_preset_is_an_error_naming_both_files(tmp_path):
    phi = (REPO / "presets" / "phi-4.yaml").read_text()
    (tmp_path / "phi-4.yaml").write_text(phi)
    with pytest.raises(CatalogError) as caught:
        load_catalog(user_dir=tmp_path)
    assert str(tmp_path / "phi-4.yaml") in caught.value.message
    assert str(REPO / "presets" / "phi-4.yaml") in caught.value.message
    result = CliRunner().invoke(main, ["--preset", "phi-4", "--dry-run", "--catalog-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "phi-4.yaml" in result.stderr and "also a built-in preset" in result.stderr


def test_a_catalog_folder_file_is_checked_by_the_same_schema(tmp_path):
    (tmp_path / "team.yaml").write_text(
        "family: team\npresets:\n  - name: my-model\n    repo_id: org/model\n    revision: main\n"
    )
    result = CliRunner().invoke(main, ["--preset", "my-model", "--dry-run", "--catalog-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "team.yaml" in result.stderr and "my-model" in result.stderr


def test_a_missing_catalog_folder_is_refused(tmp_path):
    result = CliRunner().invoke(main, ["--list-presets"], env={"KAITO_CATALOG_DIR": str(tmp_path / "none")})
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_weights_bytes_must_agree_with_weights_gib(tmp_path):
    spec = load_catalog().get("phi-4")
    text = export_yaml(spec, origin="test").replace(f"weights_bytes: {spec.weights_bytes}", "weights_bytes: 1000")
    (tmp_path / "phi-4.yaml").write_text(text)
    with pytest.raises(CatalogError, match="weights_gib says 27.31"):
        load_catalog(tmp_path)


def test_a_local_folder_cannot_be_exported():
    result = CliRunner().invoke(main, ["--model", str(REPO / "models" / "tiny-llama"), "--export-preset"])
    assert result.exit_code == 2
    assert "Cannot export" in result.stderr and "local folder" in result.stderr


# -- small hub models (issue 18, item 13) -----------------------------------------------------------


@pytest.mark.parametrize("hidden,layers,vocab", [(64, 2, 1000), (16, 1, 128)])
def test_a_small_hub_model_that_a_dry_run_plans_is_exported(tmp_path, hidden, layers, vocab):
    """A model of a few thousand to a few hundred thousand parameters: its count in billions
    rounded to 0.0 once failed the schema. What a dry run plans, --export-preset exports, and the
    export loads back and plans the same."""
    from tests.support.hub_emulator import HubEmulator
    from tests.support.model_fixtures import _dense, write_header_only, write_repo

    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
        "intermediate_size": hidden * 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": layers, "max_position_embeddings": 512, "vocab_size": vocab,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }
    root = tmp_path / "hub"
    folder = write_repo(root, "tiny-org/Tiny-Llama", config, files={})
    write_header_only(folder / "model.safetensors", _dense(config))
    (folder / "tokenizer.json").write_text('{"model": {}}')
    with HubEmulator(root, lfs_threshold=1024, valid_tokens=set()) as hub:
        env = _env(hub, tmp_path)
        runner = CliRunner()
        plan_args = ["--dry-run", "-o", "json", "--assume-gpus", "1xA100-80GB"]
        planned = runner.invoke(main, ["--preset", "tiny-org/Tiny-Llama", *plan_args], env=env)
        assert planned.exit_code == 0, planned.output
        exported = runner.invoke(main, ["--preset", "tiny-org/Tiny-Llama", "--export-preset"], env=env)
        assert exported.exit_code == 0, exported.output
        entry = yaml.safe_load(exported.stdout)["presets"][0]
        assert entry.get("params_billions", 1) > 0
        catalog = tmp_path / "catalog"
        catalog.mkdir()
        (catalog / f"{yaml.safe_load(exported.stdout)['family']}.yaml").write_text(exported.stdout)
        again = runner.invoke(main, ["--preset", entry["name"], "--catalog-dir", str(catalog), *plan_args], env=env)
        assert again.exit_code == 0, again.output
        assert _comparable(again.stdout) == _comparable(planned.stdout)


def test_an_empty_catalog_folder_adds_nothing_and_refuses_nothing(tmp_path):
    """Issue 18 item 14: an empty --catalog-dir refused every launch, built-in presets included."""
    empty = tmp_path / "catalog"
    empty.mkdir()
    runner = CliRunner()
    planned = runner.invoke(main, ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB",
                                   "--catalog-dir", str(empty)])
    assert planned.exit_code == 0, planned.output
    assert str(empty) in planned.output and "no *.yaml" in planned.output  # said once, as a warning
    listed = runner.invoke(main, ["--list-presets", "-o", "json"], env={"KAITO_CATALOG_DIR": str(empty)})
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == len(load_catalog())

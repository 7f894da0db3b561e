"""Exact sizes from safetensors headers: real models served by the hub emulator (header bytes
only, never a body), local folders read from disk, and each quantization layout's arithmetic."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.model.sizes import figures_from_headers, read_header
from kaito_runtime.model.sources import folder_weights_figures, spec_from_folder
from tests.conftest import GRANTED_TOKEN
from tests.support.model_fixtures import FIXTURES, OPT_125M_BIN_BYTES, fixture_tensors

REPO = Path(__file__).resolve().parents[2]


def _dry_run_json(hub, tmp_path, repo_id: str, *extra: str, token: str | None = None):
    env = {"HF_ENDPOINT": hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w"), "HF_HOME": str(tmp_path / "hf")}
    if token:
        env["HF_TOKEN"] = token
    args = ["--preset", repo_id, "--dry-run", "-o", "json", "--assume-gpus", "8xH100-80GB", *extra]
    return CliRunner().invoke(main, args, env=env)


def _tensor_bytes(key: str) -> int:
    from tests.support.model_fixtures import DTYPE_BYTES

    return sum(DTYPE_BYTES[d] * math.prod(s) for t in fixture_tensors(key).values() for d, s in t.values())


@pytest.mark.parametrize("key", [k for k in FIXTURES if k != "bin-only"])
def test_dry_run_of_each_real_model_by_id_shows_the_header_figures(fixture_hub, tmp_path, key):
    fx = FIXTURES[key]
    result = _dry_run_json(fixture_hub, tmp_path, fx.repo_id, token=GRANTED_TOKEN if fx.gated else None)
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)["model"]
    figures = model["weights_figures"]
    assert model["parameter_count"] == fx.parameter_count == figures["parameter_count"]
    assert figures["source"] == "safetensors headers"
    assert model["quantization"] == fx.quantization == figures["quantization"]
    assert model["kv_bytes_per_token"] == fx.kv_bytes_per_token
    assert model["max_context"] == fx.config.get("max_position_embeddings")
    assert model["generated_from"] == "hub metadata"
    # Plans use the exact tensor bytes, and those are the sum of the bytes by dtype.
    assert model["weights_bytes"] == figures["stored_bytes"] == sum(figures["bytes_by_dtype"].values())
    if key in ("llama", "qwen3", "gemma3", "fp8", "awq"):
        assert model["weights_bytes"] == _tensor_bytes(key)
    assert fixture_hub.body_requests == []
    shard_gets = [r for r in fixture_hub.records if r.method == "GET" and r.path.endswith(".safetensors")]
    assert shard_gets and all(r.header("range") for r in shard_gets)


def test_the_text_dry_run_says_generated_from_hub_metadata_and_the_count(fixture_hub, tmp_path):
    env = {"HF_ENDPOINT": fixture_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")}
    result = CliRunner().invoke(main, ["--preset", "Qwen/Qwen3-0.6B", "--dry-run", "--assume-gpus", "1xA100-80GB"], env=env)
    assert result.exit_code == 0, result.output
    assert "parameters 751,632,384 (stored BF16 751,632,384)" in result.stdout
    assert "generated from hub metadata" in result.stdout


def test_quantized_figures_split_parameters_from_stored_bytes(fixture_hub, tmp_path):
    awq = json.loads(_dry_run_json(fixture_hub, tmp_path, FIXTURES["awq"].repo_id).stdout)["model"]["weights_figures"]
    # int4 weights are packed 8 per I32: fewer stored elements than parameters, a quarter of the bytes.
    assert sum(awq["parameters_by_dtype"].values()) < awq["parameter_count"]
    assert awq["stored_bytes"] < awq["parameter_count"] * 2 / 2
    assert 0 < awq["quantization_bytes"] < awq["stored_bytes"] / 10
    fp8 = json.loads(_dry_run_json(fixture_hub, tmp_path, FIXTURES["fp8"].repo_id).stdout)["model"]["weights_figures"]
    assert set(fp8["bytes_by_dtype"]) == {"BF16", "F32", "F8_E4M3"}
    assert fp8["parameters_by_dtype"]["F8_E4M3"] + fp8["parameters_by_dtype"]["BF16"] == fp8["parameter_count"]


def test_a_sharded_repo_reads_the_index_and_every_shard_header_only(fixture_hub, tmp_path):
    fx = FIXTURES["moe"]
    result = _dry_run_json(fixture_hub, tmp_path, fx.repo_id)
    assert json.loads(result.stdout)["model"]["weights_figures"]["files"] == 16
    assert fixture_hub.count(method="GET", path_contains="model.safetensors.index.json") == 1
    assert fixture_hub.body_requests == []


def test_a_mistral_format_repo_reads_only_the_format_vllm_loads(fixture_hub, tmp_path):
    result = _dry_run_json(fixture_hub, tmp_path, FIXTURES["mistral"].repo_id)
    assert json.loads(result.stdout)["model"]["weights_figures"]["files"] == 5
    assert fixture_hub.count(path_contains="consolidated.safetensors") == 0


def test_a_bin_only_repo_falls_back_to_file_sizes_and_says_so(fixture_hub, tmp_path):
    result = _dry_run_json(fixture_hub, tmp_path, FIXTURES["bin-only"].repo_id)
    assert result.exit_code == 0, result.output
    model = json.loads(result.stdout)["model"]
    assert model["parameter_count"] is None and model["weights_bytes"] == OPT_125M_BIN_BYTES
    assert model["weights_figures"]["source"] == "file sizes" and "no *.safetensors" in model["weights_figures"]["note"]
    text = CliRunner().invoke(main, ["--preset", "facebook/opt-125m", "--dry-run", "--assume-gpus", "1xA100-80GB"],
                              env={"HF_ENDPOINT": fixture_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")})
    assert "from file sizes: no *.safetensors" in text.stdout
    assert fixture_hub.count(method="GET", path_contains=".bin") == 0


def test_a_gated_model_without_a_token_exits_11_before_any_figure(fixture_hub, tmp_path):
    result = _dry_run_json(fixture_hub, tmp_path, FIXTURES["llama"].repo_id)
    assert result.exit_code == 11, result.output
    assert fixture_hub.count(method="GET", path_contains=".safetensors") == 0


def test_an_unsupported_architecture_reads_no_header(fixture_hub, tmp_path):
    result = _dry_run_json(fixture_hub, tmp_path, "google-t5/t5-small")
    assert result.exit_code == 2 and "T5ForConditionalGeneration" in result.output
    assert fixture_hub.count(path_contains=".safetensors") == 0


# --- local folders: the headers on disk -----------------------------------------------------------


def test_a_local_folder_is_sized_from_its_headers_on_disk(fixture_root, tmp_path):
    folder = tmp_path / "qwen3"
    shutil.copytree(fixture_root / FIXTURES["qwen3"].repo_id, folder)
    spec = spec_from_folder(folder)
    assert spec.parameter_count == FIXTURES["qwen3"].parameter_count
    assert spec.weights_bytes == _tensor_bytes("qwen3") and spec.generated_from == "folder metadata"


def test_the_bundled_tiny_model_agrees_with_the_safetensors_library():
    from safetensors import safe_open

    path = REPO / "models" / "tiny-llama" / "model.safetensors"
    with safe_open(str(path), "np") as f:
        expected = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    figures = folder_weights_figures(path.parent)
    assert figures.parameter_count == expected and figures.files == 1
    assert figures.stored_bytes == path.stat().st_size - 8 - int.from_bytes(path.read_bytes()[:8], "little")


def test_a_file_that_is_not_safetensors_is_an_input_error_naming_it(tmp_path):
    from kaito_runtime.errors import InputError

    bad = tmp_path / "model.safetensors"
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(InputError, match="model.safetensors is not a readable safetensors file"):
        read_header(bad)


# --- each quantization layout (real tensor names, shapes made small) ----------------------------


def _t(dtype: str, *shape: int) -> tuple[str, tuple[int, ...], int]:
    size = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "U8": 1, "I8": 1, "F8_E4M3": 1}[dtype]
    return dtype, shape, size * math.prod(shape)


def test_gptq_unpacks_qweight_and_leaves_out_zeros_scales_and_group_index():
    header = {
        "model.layers.0.mlp.down_proj.qweight": _t("I32", 1024 // 8, 256),  # in/8 x out, 4 bits
        "model.layers.0.mlp.down_proj.qzeros": _t("I32", 8, 256 // 8),
        "model.layers.0.mlp.down_proj.scales": _t("F16", 8, 256),
        "model.layers.0.mlp.down_proj.g_idx": _t("I32", 1024),
        "model.embed_tokens.weight": _t("F16", 100, 256),
    }
    f = figures_from_headers({"m.safetensors": header}, {"quantization_config": {"quant_method": "gptq", "bits": 4}})
    assert f.parameter_count == 1024 * 256 + 100 * 256
    assert f.quantization == "gptq" and f.quantization_bytes == 8 * 32 * 4 + 8 * 256 * 2 + 1024 * 4


def test_compressed_tensors_pack_quantized_and_fp8():
    int4 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 4}}}}
    header = {
        "model.layers.0.self_attn.q_proj.weight_packed": _t("I32", 512, 1024 // 8),
        "model.layers.0.self_attn.q_proj.weight_scale": _t("BF16", 512, 8),
        "model.layers.0.self_attn.q_proj.weight_shape": _t("I32", 2),
    }
    f = figures_from_headers({"a": header}, {"quantization_config": int4})
    assert f.parameter_count == 512 * 1024 and f.quantization == "compressed-tensors"
    fp8 = {"quant_method": "compressed-tensors", "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "float"}}}}
    header = {
        "model.layers.0.mlp.up_proj.weight": _t("F8_E4M3", 2048, 512),
        "model.layers.0.mlp.up_proj.weight_scale": _t("BF16", 2048, 1),
        "model.layers.0.mlp.up_proj.input_scale": _t("BF16", 1),
    }
    f = figures_from_headers({"a": header}, {"quantization_config": fp8})
    assert f.parameter_count == 2048 * 512 and f.quantization_bytes == 2048 * 2 + 2


def test_mxfp4_blocks_hold_two_values_a_byte():
    header = {  # gpt-oss: experts' weights as FP4 blocks of 32 with one U8 scale each
        "model.layers.0.mlp.experts.gate_up_proj_blocks": _t("U8", 4, 64, 2, 16),
        "model.layers.0.mlp.experts.gate_up_proj_scales": _t("U8", 4, 64, 2),
        "model.layers.0.mlp.experts.gate_up_proj_bias": _t("BF16", 4, 64),
    }
    f = figures_from_headers({"a": header}, {"quantization_config": {"quant_method": "mxfp4"}})
    assert f.parameter_count == 4 * 64 * 2 * 16 * 2 + 4 * 64
    assert f.quantization_bytes == 4 * 64 * 2


def test_bitsandbytes_4bit_and_8bit():
    nf4 = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    header = {
        "model.layers.0.mlp.gate_proj.weight": _t("U8", 512 * 256 // 2, 1),
        "model.layers.0.mlp.gate_proj.weight.absmax": _t("F32", 512 * 256 // 64),
        "model.layers.0.mlp.gate_proj.weight.quant_map": _t("F32", 16),
        "model.layers.0.mlp.gate_proj.weight.quant_state.bitsandbytes__nf4": _t("U8", 100),
        "model.norm.weight": _t("BF16", 256),
    }
    f = figures_from_headers({"a": header}, {"quantization_config": nf4})
    assert f.parameter_count == 512 * 256 + 256
    int8 = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    header = {"model.layers.0.mlp.gate_proj.weight": _t("I8", 512, 256), "model.layers.0.mlp.gate_proj.SCB": _t("F32", 512)}
    assert figures_from_headers({"a": header}, {"quantization_config": int8}).parameter_count == 512 * 256


def test_unquantized_models_count_every_tensor_even_one_named_like_a_scale():
    header = {"model.layers.0.mlp.scales": _t("BF16", 10)}
    assert figures_from_headers({"a": header}, {}).parameter_count == 10

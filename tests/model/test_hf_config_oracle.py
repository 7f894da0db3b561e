"""The KV geometry we compute, against vLLM's own arithmetic: for every built-in preset's
config.json (tests/data/preset_configs) and every hub-emulator fixture, at TP 1, 2, 4 and 8
wherever the heads allow, the KV bytes per token per rank from our config reader and planner
equal what vLLM's ModelConfig gives on the CPU (layers x K and V, or one MLA latent, x KV heads
per rank x head size x the dtype's bytes). vLLM runs once, in one subprocess, for all cases.

vLLM's CPU build has no torchvision, which inspecting a multimodal architecture imports; for
those (Gemma 3, Ministral 3) vLLM is given the text config it reads the KV figures from
(hf_text_config) as a text-only model. We still read the full, nested config.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.model.hf_config import spec_from_hf_config
from tests.support.steps import kv_bytes_per_token_per_gpu, kv_dtype_bytes
from tests.support.steps import tp_rule_violation
from tests.support.model_fixtures import FIXTURES

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "tests" / "data" / "preset_configs"
TPS = (1, 2, 4, 8)
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Mistral-native only (params.json, no transformers config.json): not in the shipped configs.
NO_HF_CONFIG = {"mistral-large-3-675b-instruct"}
TEXT_ONLY = {"Gemma3ForConditionalGeneration": "Gemma3ForCausalLM", "Mistral3ForConditionalGeneration": "Ministral3ForCausalLM"}


def _cases() -> dict[str, dict]:
    cases = {f"preset:{p.stem}": json.loads(p.read_text()) for p in sorted(CONFIGS.glob("*.json"))}
    cases |= {f"fixture:{key}": fx.config for key, fx in FIXTURES.items()}
    return cases


def test_every_preset_has_its_config_and_the_config_gives_the_catalog_geometry():
    catalog = load_catalog()
    assert {p.stem for p in CONFIGS.glob("*.json")} == set(catalog.names()) - NO_HF_CONFIG
    for path in sorted(CONFIGS.glob("*.json")):
        preset = catalog.get(path.stem)
        spec = spec_from_hf_config(json.loads(path.read_text()), name=preset.name, weights_bytes=1)
        assert spec.architecture == preset.architecture, path.stem
        assert spec.attention == preset.attention, path.stem
        assert spec.kv_bytes_per_token == preset.kv_bytes_per_token, path.stem
        assert spec.max_context == preset.max_context, path.stem
        assert (spec.sliding_window, spec.sliding_window_layers) == (preset.sliding_window, preset.sliding_window_layers), path.stem


def _vllm_folder(root: Path, name: str, config: dict) -> Path:
    folder = root / name.replace(":", "-")
    folder.mkdir()
    text = config.get("text_config")
    if config["architectures"][0] in TEXT_ONLY and isinstance(text, dict):
        config = {**text, "architectures": [TEXT_ONLY[config["architectures"][0]]],
                  "torch_dtype": text.get("torch_dtype", config.get("torch_dtype"))}
        if "quantization_config" in config:
            config.pop("quantization_config")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("vllm-oracle")
    cases = _cases()
    folders = {name: _vllm_folder(root, name, config) for name, config in cases.items()}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "kaito_runtime" / "launch" / "amx_site"), str(REPO)) if p)
    env.pop("HF_ENDPOINT", None)
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, str(REPO / "tests" / "support" / "vllm_kv_oracle.py")],
        input=json.dumps([{"folder": str(f), "tps": list(TPS)} for f in folders.values()]),
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("ORACLE "))
    by_folder = {r["folder"]: r for r in json.loads(line.removeprefix("ORACLE "))}
    return {name: by_folder[str(folder)] for name, folder in folders.items()}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
@pytest.mark.parametrize("name", sorted(_cases()))
def test_kv_bytes_per_token_per_rank_equal_vllms(oracle, name):
    config = _cases()[name]
    theirs = oracle[name]
    assert "error" not in theirs, theirs.get("trace") or theirs.get("error")
    spec = spec_from_hf_config(config, name="oracle", weights_bytes=1)
    assert spec.attention.is_mla == theirs["use_mla"]
    assert spec.dtype == theirs["dtype"]
    if theirs["sliding_layers"]:  # vLLM lays the layers out from layer_types
        assert (spec.sliding_window, spec.sliding_window_layers) == (theirs["sliding_window"], theirs["sliding_layers"])
    checked = 0
    for tp in TPS:
        v = theirs["tp"][str(tp)]
        ours_ok = tp_rule_violation(spec, tp) is None
        # ModelConfig checks the attention heads; vLLM's QKVParallelLinear then divides the KV
        # heads by TP, or TP by the KV heads when TP is larger (model_executor/layers/linear.py).
        kv = theirs["total_kv_heads"]
        vllm_ok = v["accepted"] and (theirs["use_mla"] or kv % tp == 0 or tp % kv == 0)
        assert ours_ok == vllm_ok, (tp, tp_rule_violation(spec, tp), v["why"])
        if not ours_ok:
            continue
        vllm_bytes = v["layers"] * (1 if theirs["use_mla"] else 2) * v["kv_heads"] * v["head_size"] * DTYPE_BYTES[theirs["dtype"]]
        ours = kv_bytes_per_token_per_gpu(spec.attention, tp, 1, kv_dtype_bytes(spec.dtype, None))
        assert ours == vllm_bytes, (tp, ours, vllm_bytes, v)
        checked += 1
    assert checked >= 1

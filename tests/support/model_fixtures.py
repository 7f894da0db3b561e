"""Real models as hub-emulator repos: each one's real config.json figures, and safetensors files
that hold only the header (the real tensor names, shapes and dtypes), generated from shapes.

No shard body is stored: a repo folder holds ``<shard>.safetensors`` as its header bytes and a
``<shard>.safetensors.kaito-size`` sidecar with the real file size; the emulator reports that
size and serves the header bytes to Range requests (tests/support/hub_emulator.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# google-t5/t5-small: an encoder-decoder vLLM does not serve.
T5_SMALL_CONFIG: dict[str, Any] = {
    "architectures": ["T5ForConditionalGeneration"],
    "d_ff": 2048,
    "d_kv": 64,
    "d_model": 512,
    "decoder_start_token_id": 0,
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "n_positions": 512,
    "num_heads": 8,
    "num_layers": 6,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_num_buckets": 32,
    "vocab_size": 32128,
}

# A repo that brings its own modelling code (auto_map), under an architecture vLLM does not know.
CUSTOM_CODE_CONFIG: dict[str, Any] = {
    "architectures": ["AcmeForCausalLM"],
    "auto_map": {"AutoConfig": "configuration_acme.AcmeConfig", "AutoModelForCausalLM": "modeling_acme.AcmeForCausalLM"},
    "model_type": "acme",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "torch_dtype": "bfloat16",
}

# BAAI/bge-small-en-v1.5: served by vLLM for embeddings only.
BERT_CONFIG: dict[str, Any] = {
    "architectures": ["BertModel"],
    "hidden_size": 384,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "torch_dtype": "float32",
}


def write_repo(root: Path, repo_id: str, config: dict[str, Any], files: dict[str, bytes] | None = None) -> Path:
    folder = root / repo_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name, data in (files or {"model.safetensors": b"\0" * 64}).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def build_unsupported_repos(root: Path) -> Path:
    write_repo(root, "google-t5/t5-small", T5_SMALL_CONFIG)
    write_repo(root, "acme/custom-code", CUSTOM_CODE_CONFIG, {"model.safetensors": b"\0" * 64, "modeling_acme.py": b"# code\n"})
    write_repo(root, "BAAI/bge-small-en-v1.5", BERT_CONFIG)
    return root

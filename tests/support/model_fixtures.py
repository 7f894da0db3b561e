"""Real models as hub-emulator repos: each one's real config.json figures, and safetensors files
that hold only the header (the real tensor names, shapes and dtypes), generated from shapes.

No shard body is stored: a repo folder holds ``<shard>.safetensors`` as its header bytes and a
``<shard>.safetensors.kaito-size`` sidecar with the real file size; the emulator reports that
size and serves the header bytes to Range requests (tests/support/hub_emulator.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------------------------
# Header-only safetensors files, generated from shapes
# ------------------------------------------------------------------------------------------------

DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1}
SIZE_SIDECAR = ".kaito-size"
Shapes = dict[str, tuple[str, tuple[int, ...]]]  # tensor name -> (dtype, shape)


def header_bytes(tensors: Shapes) -> tuple[bytes, int]:
    """(the 8-byte length + JSON header, padded to 8 bytes as the safetensors library writes it;
    the size of the whole file)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = DTYPE_BYTES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, 8 + len(raw) + offset


def write_header_only(path: Path, tensors: Shapes) -> int:
    """``path`` holding only the header, and its ``.kaito-size`` sidecar; returns the real size."""
    data, size = header_bytes(tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.with_name(path.name + SIZE_SIDECAR).write_text(str(size))
    return size


def write_sharded(folder: Path, tensors: Shapes, shards: int) -> None:
    """``model-0000i-of-0000n.safetensors`` in tensor order, and the index naming them."""
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        part = names[i * per : (i + 1) * per]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_header_only(folder / file, {n: tensors[n] for n in part})
        for n in part:
            dtype, shape = tensors[n]
            b = DTYPE_BYTES[dtype]
            for d in shape:
                b *= d
            total += b
            weight_map[n] = file
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))


def decoder(
    *, layers: int, hidden: int, inter: int, heads: int, kv: int, head_dim: int, vocab: int, dtype: str = "BF16",
    tied: bool, qkv_bias: bool = False, qk_norm: bool = False, gemma_norms: bool = False,
    mlp=None,
) -> Shapes:
    """A Llama-style decoder in transformers' tensor names (Llama, Qwen2/3, Mistral, Gemma 3)."""
    t: Shapes = {"model.embed_tokens.weight": (dtype, (vocab, hidden))}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (dtype, (hidden,))
        for proj, out in (("q", heads * head_dim), ("k", kv * head_dim), ("v", kv * head_dim)):
            t[p + f"self_attn.{proj}_proj.weight"] = (dtype, (out, hidden))
            if qkv_bias:
                t[p + f"self_attn.{proj}_proj.bias"] = (dtype, (out,))
        t[p + "self_attn.o_proj.weight"] = (dtype, (hidden, heads * head_dim))
        if qk_norm:
            t[p + "self_attn.q_norm.weight"] = (dtype, (head_dim,))
            t[p + "self_attn.k_norm.weight"] = (dtype, (head_dim,))
        t[p + "post_attention_layernorm.weight"] = (dtype, (hidden,))
        if gemma_norms:
            t[p + "pre_feedforward_layernorm.weight"] = (dtype, (hidden,))
            t[p + "post_feedforward_layernorm.weight"] = (dtype, (hidden,))
        if mlp is None:
            t[p + "mlp.gate_proj.weight"] = (dtype, (inter, hidden))
            t[p + "mlp.up_proj.weight"] = (dtype, (inter, hidden))
            t[p + "mlp.down_proj.weight"] = (dtype, (hidden, inter))
        else:
            t.update(mlp(i, p, dtype))
    t["model.norm.weight"] = (dtype, (hidden,))
    if not tied:
        t["lm_head.weight"] = (dtype, (vocab, hidden))
    return t


_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def awq(tensors: Shapes, group: int = 128) -> Shapes:
    """AutoAWQ GEMM layout: qweight I32 [in, out/8], qzeros I32 [in/g, out/8], scales F16 [in/g, out]."""
    out: Shapes = {}
    for name, (dtype, shape) in tensors.items():
        base = name.removesuffix(".weight")
        if name.endswith(".weight") and base.rsplit(".", 1)[-1] in _LINEAR and ".layers." in name:
            o, i = shape
            out[base + ".qweight"] = ("I32", (i, o // 8))
            out[base + ".qzeros"] = ("I32", (i // group, o // 8))
            out[base + ".scales"] = ("F16", (i // group, o))
        else:
            out[name] = ("F16", shape)
    return out


def fp8_blocks(tensors: Shapes, block: int = 128) -> Shapes:
    """Block-wise FP8 (Qwen3-FP8 / DeepSeek-V3 layout): F8_E4M3 weights and F32 weight_scale_inv."""
    out: Shapes = {}
    for name, (dtype, shape) in tensors.items():
        base = name.removesuffix(".weight")
        out[name] = (dtype, shape)
        if name.endswith(".weight") and base.rsplit(".", 1)[-1] in _LINEAR and ".layers." in name:
            o, i = shape
            out[name] = ("F8_E4M3", shape)
            out[base + ".weight_scale_inv"] = ("F32", (-(-o // block), -(-i // block)))
    return out


def qwen3_moe_mlp(experts: int, moe_inter: int, hidden: int):
    def mlp(i: int, p: str, dtype: str) -> Shapes:
        t: Shapes = {p + "mlp.gate.weight": (dtype, (experts, hidden))}
        for e in range(experts):
            q = f"{p}mlp.experts.{e}."
            t[q + "gate_proj.weight"] = (dtype, (moe_inter, hidden))
            t[q + "up_proj.weight"] = (dtype, (moe_inter, hidden))
            t[q + "down_proj.weight"] = (dtype, (hidden, moe_inter))
        return t

    return mlp


def deepseek_v2(cfg: dict[str, Any]) -> Shapes:
    """DeepSeek-V2(-Lite) with MLA (no q LoRA), first_k_dense_replace dense layers, then MoE."""
    h, heads, dtype = cfg["hidden_size"], cfg["num_attention_heads"], "BF16"
    nope, rope, vdim, r = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"], cfg["kv_lora_rank"]
    t: Shapes = {"model.embed_tokens.weight": (dtype, (cfg["vocab_size"], h))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (dtype, (h,))
        t[p + "self_attn.q_proj.weight"] = (dtype, (heads * (nope + rope), h))
        t[p + "self_attn.kv_a_proj_with_mqa.weight"] = (dtype, (r + rope, h))
        t[p + "self_attn.kv_a_layernorm.weight"] = (dtype, (r,))
        t[p + "self_attn.kv_b_proj.weight"] = (dtype, (heads * (nope + vdim), r))
        t[p + "self_attn.o_proj.weight"] = (dtype, (h, heads * vdim))
        t[p + "post_attention_layernorm.weight"] = (dtype, (h,))
        if i < cfg["first_k_dense_replace"]:
            inter = cfg["intermediate_size"]
            t[p + "mlp.gate_proj.weight"] = (dtype, (inter, h))
            t[p + "mlp.up_proj.weight"] = (dtype, (inter, h))
            t[p + "mlp.down_proj.weight"] = (dtype, (h, inter))
            continue
        m, e = cfg["moe_intermediate_size"], cfg["n_routed_experts"]
        t[p + "mlp.gate.weight"] = (dtype, (e, h))
        for x in range(e):
            q = f"{p}mlp.experts.{x}."
            t[q + "gate_proj.weight"] = (dtype, (m, h))
            t[q + "up_proj.weight"] = (dtype, (m, h))
            t[q + "down_proj.weight"] = (dtype, (h, m))
        s = m * cfg["n_shared_experts"]
        t[p + "mlp.shared_experts.gate_proj.weight"] = (dtype, (s, h))
        t[p + "mlp.shared_experts.up_proj.weight"] = (dtype, (s, h))
        t[p + "mlp.shared_experts.down_proj.weight"] = (dtype, (h, s))
    t["model.norm.weight"] = (dtype, (h,))
    t["lm_head.weight"] = (dtype, (cfg["vocab_size"], h))
    return t


def mistral_consolidated(cfg: dict[str, Any]) -> Shapes:
    """The same Mistral weights in Mistral's own names (consolidated.safetensors)."""
    h, inter, heads, kv, hd, dtype = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], 128, "BF16"
    t: Shapes = {"tok_embeddings.weight": (dtype, (cfg["vocab_size"], h))}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        t[p + "attention_norm.weight"] = (dtype, (h,))
        t[p + "attention.wq.weight"] = (dtype, (heads * hd, h))
        t[p + "attention.wk.weight"] = (dtype, (kv * hd, h))
        t[p + "attention.wv.weight"] = (dtype, (kv * hd, h))
        t[p + "attention.wo.weight"] = (dtype, (h, heads * hd))
        t[p + "ffn_norm.weight"] = (dtype, (h,))
        t[p + "feed_forward.w1.weight"] = (dtype, (inter, h))
        t[p + "feed_forward.w2.weight"] = (dtype, (h, inter))
        t[p + "feed_forward.w3.weight"] = (dtype, (inter, h))
    t["norm.weight"] = (dtype, (h,))
    t["output.weight"] = (dtype, (cfg["vocab_size"], h))
    return t


def write_repo(root: Path, repo_id: str, config: dict[str, Any], files: dict[str, bytes] | None = None) -> Path:
    folder = root / repo_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for name, data in ({"model.safetensors": b"\0" * 64} if files is None else files).items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def build_unsupported_repos(root: Path) -> Path:
    write_repo(root, "google-t5/t5-small", T5_SMALL_CONFIG)
    custom = write_repo(root, "acme/custom-code", CUSTOM_CODE_CONFIG, {"modeling_acme.py": b"# code\n"})
    write_header_only(custom / "model.safetensors", decoder(layers=2, hidden=64, inter=128, heads=4, kv=2, head_dim=16, vocab=256, tied=True))
    write_repo(root, "BAAI/bge-small-en-v1.5", BERT_CONFIG)
    return root


# ------------------------------------------------------------------------------------------------
# Real models: config.json as published, and their weight files' tensors
# ------------------------------------------------------------------------------------------------

LLAMA_3_2_1B_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192, "max_position_embeddings": 131072,
    "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 16,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "vocab_size": 128256,
}

QWEN3_0_6B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
    "initializer_range": 0.02, "intermediate_size": 3072, "max_position_embeddings": 40960, "max_window_layers": 28,
    "model_type": "qwen3", "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000, "sliding_window": None,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}

QWEN3_0_6B_FP8_CONFIG: dict[str, Any] = {
    **QWEN3_0_6B_CONFIG,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]},
}

QWEN3_30B_A3B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144, "max_position_embeddings": 40960,
    "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 768,
    "norm_topk_prob": True, "num_attention_heads": 32, "num_experts": 128, "num_experts_per_tok": 8,
    "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": False, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}

GEMMA_3_1B_CONFIG: dict[str, Any] = {
    "architectures": ["Gemma3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": None, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": [1, 106],
    "final_logit_softcapping": None, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 1152,
    "initializer_range": 0.02, "intermediate_size": 6912, "max_position_embeddings": 32768, "model_type": "gemma3_text",
    "num_attention_heads": 4, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
    "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": 512, "sliding_window_pattern": 6, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 262144,
}

DEEPSEEK_V2_LITE_CONFIG: dict[str, Any] = {
    "architectures": ["DeepseekV2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV2Config",
                 "AutoModel": "modeling_deepseek.DeepseekV2Model",
                 "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"},
    "aux_loss_alpha": 0.001, "bos_token_id": 100000, "eos_token_id": 100001, "first_k_dense_replace": 1,
    "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 10944,
    "kv_lora_rank": 512, "max_position_embeddings": 163840, "model_type": "deepseek_v2", "moe_intermediate_size": 1408,
    "moe_layer_freq": 1, "n_group": 1, "n_routed_experts": 64, "n_shared_experts": 2, "norm_topk_prob": False,
    "num_attention_heads": 16, "num_experts_per_tok": 6, "num_hidden_layers": 27, "num_key_value_heads": 16,
    "q_lora_rank": None, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "rope_theta": 10000, "routed_scaling_factor": 1.0, "scoring_func": "softmax", "seq_aux": True,
    "tie_word_embeddings": False, "topk_group": 1, "topk_method": "greedy", "torch_dtype": "bfloat16",
    "use_cache": True, "v_head_dim": 128, "vocab_size": 102400,
}

QWEN2_5_0_5B_AWQ_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2,
    "quantization_config": {"bits": 4, "group_size": 128, "modules_to_not_convert": None, "quant_method": "awq",
                            "version": "gemm", "zero_point": True},
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
    "torch_dtype": "float16", "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}

# mistralai/Mistral-Nemo-Instruct-2407: both formats (HF shards and consolidated.safetensors +
# params.json), and an explicit head_dim (128) that differs from hidden / heads (160).
MISTRAL_NEMO_CONFIG: dict[str, Any] = {
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
    "intermediate_size": 14336, "max_position_embeddings": 1024000, "model_type": "mistral",
    "num_attention_heads": 32, "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "vocab_size": 131072,
}
MISTRAL_NEMO_PARAMS = {"dim": 5120, "n_layers": 40, "head_dim": 128, "hidden_dim": 14336, "n_heads": 32,
                       "n_kv_heads": 8, "rope_theta": 1000000.0, "norm_eps": 1e-05, "vocab_size": 131072}

OPT_125M_CONFIG: dict[str, Any] = {
    "architectures": ["OPTForCausalLM"], "activation_function": "relu", "attention_dropout": 0.0, "bos_token_id": 2,
    "do_layer_norm_before": True, "dropout": 0.1, "eos_token_id": 2, "ffn_dim": 3072, "hidden_size": 768,
    "init_std": 0.02, "layerdrop": 0.0, "max_position_embeddings": 2048, "model_type": "opt",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1, "torch_dtype": "float16",
    "vocab_size": 50272, "word_embed_proj_dim": 768,
}
OPT_125M_BIN_BYTES = 250_540_281  # facebook/opt-125m pytorch_model.bin


def _dense(cfg: dict[str, Any], **kw: Any) -> Shapes:
    heads = cfg["num_attention_heads"]
    return decoder(
        layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], inter=cfg["intermediate_size"], heads=heads,
        kv=cfg["num_key_value_heads"], head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        vocab=cfg["vocab_size"], tied=cfg.get("tie_word_embeddings", True), **kw,
    )


@dataclass(frozen=True)
class Fixture:
    """A real model as a hub repo, and what the launcher must derive for it."""

    repo_id: str
    config: dict[str, Any]
    parameter_count: int | None  # the model card's / the checkpoint's own count
    quantization: str | None = None
    gated: bool = False
    kv_bytes_per_token: int | None = None  # bf16 KV, all layers, one copy


def _qwen3_0_6b() -> Shapes:
    return {**_dense(QWEN3_0_6B_CONFIG, qk_norm=True), "lm_head.weight": ("BF16", (151936, 1024))}


FIXTURES: dict[str, Fixture] = {
    "llama": Fixture("meta-llama/Llama-3.2-1B-Instruct", LLAMA_3_2_1B_CONFIG, 1_235_814_400, gated=True,
                     kv_bytes_per_token=2 * 16 * 8 * 64 * 2),
    "qwen3": Fixture("Qwen/Qwen3-0.6B", QWEN3_0_6B_CONFIG, 751_632_384, kv_bytes_per_token=2 * 28 * 8 * 128 * 2),
    "moe": Fixture("Qwen/Qwen3-30B-A3B", QWEN3_30B_A3B_CONFIG, 30_532_122_624, kv_bytes_per_token=2 * 48 * 4 * 128 * 2),
    "gemma3": Fixture("google/gemma-3-1b-it", GEMMA_3_1B_CONFIG, 999_885_952, kv_bytes_per_token=2 * 26 * 1 * 256 * 2),
    "mla": Fixture("deepseek-ai/DeepSeek-V2-Lite-Chat", DEEPSEEK_V2_LITE_CONFIG, 15_706_484_224,
                   kv_bytes_per_token=27 * (512 + 64) * 2),
    "awq": Fixture("Qwen/Qwen2.5-0.5B-Instruct-AWQ", QWEN2_5_0_5B_AWQ_CONFIG, 494_032_768, quantization="awq",
                   kv_bytes_per_token=2 * 24 * 2 * 64 * 2),
    "fp8": Fixture("Qwen/Qwen3-0.6B-FP8", QWEN3_0_6B_FP8_CONFIG, 751_632_384, quantization="fp8",
                   kv_bytes_per_token=2 * 28 * 8 * 128 * 2),
    "mistral": Fixture("mistralai/Mistral-Nemo-Instruct-2407", MISTRAL_NEMO_CONFIG, 12_247_782_400,
                       kv_bytes_per_token=2 * 40 * 8 * 128 * 2),
    "bin-only": Fixture("facebook/opt-125m", OPT_125M_CONFIG, None, kv_bytes_per_token=2 * 12 * 12 * 64 * 2),
}


def fixture_tensors(key: str) -> dict[str, Shapes]:
    """file name -> tensors, for the safetensors files of each fixture."""
    if key == "llama":
        return {"model.safetensors": _dense(LLAMA_3_2_1B_CONFIG)}
    if key == "qwen3":
        return {"model.safetensors": _qwen3_0_6b()}
    if key == "fp8":
        return {"model.safetensors": fp8_blocks(_qwen3_0_6b())}
    if key == "gemma3":
        return {"model.safetensors": _dense(GEMMA_3_1B_CONFIG, qk_norm=True, gemma_norms=True)}
    if key == "awq":
        return {"model.safetensors": awq(_dense(QWEN2_5_0_5B_AWQ_CONFIG, qkv_bias=True))}
    raise KeyError(key)


def build_fixture_hub(root: Path) -> Path:
    """Every fixture as ``root/<org>/<name>``: config.json and header-only weight files."""
    for key, fx in FIXTURES.items():
        folder = write_repo(root, fx.repo_id, fx.config, files={})
        (folder / "tokenizer.json").write_text('{"model": {}}')
        if key == "moe":
            write_sharded(folder, _dense(QWEN3_30B_A3B_CONFIG, qk_norm=True,
                                         mlp=qwen3_moe_mlp(128, 768, 2048)), shards=16)
        elif key == "mla":
            write_sharded(folder, deepseek_v2(DEEPSEEK_V2_LITE_CONFIG), shards=4)
            (folder / "modeling_deepseek.py").write_text("# the repo's own code\n")
        elif key == "mistral":
            write_sharded(folder, _dense(MISTRAL_NEMO_CONFIG), shards=5)
            write_header_only(folder / "consolidated.safetensors", mistral_consolidated(MISTRAL_NEMO_CONFIG))
            (folder / "params.json").write_text(json.dumps(MISTRAL_NEMO_PARAMS))
            (folder / "tekken.json").write_text('{"vocab": []}')
        elif key == "bin-only":
            (folder / "pytorch_model.bin").write_bytes(b"PK\x03\x04")  # a zip's first bytes: never read
            (folder / ("pytorch_model.bin" + SIZE_SIDECAR)).write_text(str(OPT_125M_BIN_BYTES))
        else:
            for name, tensors in fixture_tensors(key).items():
                write_header_only(folder / name, tensors)
    build_unsupported_repos(root)
    return root

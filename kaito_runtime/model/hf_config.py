"""Build a ``ModelSpec`` from a Hugging Face ``config.json`` (a model outside the preset catalog).

Pure: takes the parsed dict, does no I/O (``read_config_json`` is the one helper that reads a file).
Multimodal configs (Gemma-3, Mistral3) keep the language-model figures under ``text_config``;
older Falcon configs use their own key names (``n_layer``, ``n_head``, ``multi_query``,
``new_decoder_architecture``). Figures are read the way vLLM reads them for sizing the KV cache.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kaito_runtime.errors import InputError, value_kind
from kaito_runtime.model.architectures import check_served
from kaito_runtime.types import AttentionGeometry, ModelSpec

# transformers' FalconConfig leaves max_position_embeddings out of config.json and assumes this.
_FALCON_DEFAULT_CONTEXT = 2048

_CONTEXT_KEYS = ("max_position_embeddings", "max_seq_len", "n_positions", "seq_length")

_DTYPE_ALIASES = {
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
}


class _Reader:
    """Looks figures up in ``text_config`` first, then at the top level."""

    def __init__(self, config: dict[str, Any], source: str) -> None:
        text = config.get("text_config")
        self._layers = [text, config] if isinstance(text, dict) else [config]
        self.source = source

    def raw(self, *keys: str) -> tuple[str, Any] | None:
        for layer in self._layers:
            for key in keys:
                value = layer.get(key)
                if value is not None:
                    return key, value
        return None

    def int_or_none(self, *keys: str) -> int | None:
        found = self.raw(*keys)
        if found is None:
            return None
        key, value = found
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(
                f"Invalid '{key}' in {self.source}",
                why=f"It must be a positive integer, not {value!r}",
                fix="check that the file is an unmodified Hugging Face config.json",
            )
        return value

    def required_int(self, *keys: str) -> int:
        value = self.int_or_none(*keys)
        if value is None:
            raise self.missing(*keys)
        return value

    def flag(self, key: str) -> bool:
        found = self.raw(key)
        return bool(found and found[1])

    def missing(self, *keys: str) -> InputError:
        names = " / ".join(f"'{k}'" for k in keys)
        return InputError(
            f"{self.source} has no {names}",
            why="The launcher needs it to size the model's KV cache and context",
            fix="use a model whose config.json has it, or add the model to the preset catalog",
        )


def _architecture(config: dict[str, Any], source: str) -> str:
    archs = config.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str) or not archs[0]:
        raise InputError(
            f"{source} has no 'architectures' list",
            why="vLLM picks the model implementation from architectures[0]",
            fix="use a model whose config.json names its architecture (transformers-format repos do)",
        )
    return archs[0]


def _is_falcon(config: dict[str, Any], architecture: str) -> bool:
    return config.get("model_type") in ("falcon", "RefinedWeb", "RefinedWebModel") or (
        architecture.startswith(("Falcon", "RW"))
    )


def _kv_heads(reader: _Reader, heads: int) -> int:
    # Same precedence as vLLM's Falcon model: the new decoder architecture names its KV head
    # count; otherwise multi_query means one shared KV head.
    if reader.flag("new_decoder_architecture"):
        return reader.int_or_none("num_kv_heads", "n_head_kv", "num_key_value_heads") or heads
    if reader.flag("multi_query"):
        return 1
    return reader.int_or_none("num_key_value_heads", "num_kv_heads", "n_head_kv") or heads


def _geometry(reader: _Reader) -> AttentionGeometry:
    layers = reader.required_int("num_hidden_layers", "n_layer", "num_layers")
    heads = reader.required_int("num_attention_heads", "n_head")
    kv_lora_rank = reader.int_or_none("kv_lora_rank")
    if kv_lora_rank is not None:
        rope = reader.int_or_none("qk_rope_head_dim")
        if rope is None:
            raise reader.missing("qk_rope_head_dim")
        return AttentionGeometry(
            num_layers=layers,
            num_attention_heads=heads,
            kv_lora_rank=kv_lora_rank,
            qk_rope_head_dim=rope,
        )
    head_dim = reader.int_or_none("head_dim")
    if head_dim is None:
        hidden = reader.int_or_none("hidden_size", "n_embd", "d_model")
        if hidden is None:
            raise reader.missing("head_dim", "hidden_size")
        head_dim = hidden // heads
    return AttentionGeometry(
        num_layers=layers,
        num_attention_heads=heads,
        num_kv_heads=_kv_heads(reader, heads),
        head_dim=head_dim,
    )


def _max_context(reader: _Reader, falcon: bool) -> int:
    context = reader.int_or_none(*_CONTEXT_KEYS)
    if context is not None:
        return context
    if falcon:
        return _FALCON_DEFAULT_CONTEXT
    raise reader.missing(*_CONTEXT_KEYS)


def _dtype(reader: _Reader) -> str:
    found = reader.raw("torch_dtype", "dtype")
    if found is None:
        return "bfloat16"  # ModelSpec's default; vLLM's "auto" decides at load time anyway
    value = str(found[1]).removeprefix("torch.").lower()
    return _DTYPE_ALIASES.get(value, value)


def _quantization(config: dict[str, Any]) -> str | None:
    text = config.get("text_config")
    for layer in (config, text if isinstance(text, dict) else {}):
        quant = layer.get("quantization_config")
        if isinstance(quant, dict) and isinstance(quant.get("quant_method"), str):
            return quant["quant_method"]
    return None


def _lenient_int(reader: _Reader, *keys: str) -> int | None:
    """A positive integer figure, or None when absent or not one (these only refine the memory budget)."""
    found = reader.raw(*keys)
    if found is None or isinstance(found[1], bool) or not isinstance(found[1], int) or found[1] <= 0:
        return None
    return found[1]


def _sliding_window(reader: _Reader, layers: int) -> tuple[int | None, int]:
    """(window, layers using it) as transformers lays the layers out for vLLM: ``layer_types``
    when the config lists them, else the model type's rule (Gemma 2 every other layer, Gemma 3
    five of every six, Qwen2/3 from max_window_layers when use_sliding_window is on)."""
    window = _lenient_int(reader, "sliding_window")
    if window is None:
        return None, 0
    found = reader.raw("layer_types")
    if found is not None and isinstance(found[1], list):
        count = sum(1 for kind in found[1][:layers] if kind == "sliding_attention")
    else:
        kind = str((reader.raw("model_type") or ("", ""))[1])
        if kind.startswith("gemma2"):
            count = sum(1 for i in range(layers) if (i + 1) % 2)
        elif kind.startswith("gemma3"):
            pattern = _lenient_int(reader, "sliding_window_pattern") or 6
            count = sum(1 for i in range(layers) if (i + 1) % pattern)
        elif kind.startswith(("qwen2", "qwen3")) and reader.flag("use_sliding_window"):
            start = _lenient_int(reader, "max_window_layers") or 0
            count = max(0, layers - start)
        else:
            count = 0  # a window in the config that no layer uses (vLLM reads layer_types)
    return (window, count) if count else (None, 0)


def _budget_figures(config: dict[str, Any], reader: _Reader, architecture: str, layers: int) -> dict[str, Any]:
    """The ModelSpec fields vLLM's GPU memory budget uses beyond the KV geometry."""
    tied = reader.raw("tie_word_embeddings")
    window, sliding_layers = _sliding_window(reader, layers)
    return {
        "vocab_size": _lenient_int(reader, "vocab_size", "padded_vocab_size"),
        "hidden_size": _lenient_int(reader, "hidden_size", "n_embd", "d_model"),
        "tie_word_embeddings": bool(tied[1]) if tied is not None else False,
        "num_experts": _lenient_int(reader, "num_local_experts", "n_routed_experts", "num_experts"),
        "sliding_window": window,
        "sliding_window_layers": sliding_layers,
        "multimodal": isinstance(config.get("vision_config"), dict) or architecture.endswith("ForConditionalGeneration"),
    }


def spec_from_hf_config(
    config: dict[str, Any],
    *,
    name: str,
    weights_bytes: int,
    repo_id: str | None = None,
    revision: str | None = None,
    local_path: str | None = None,
    gated: bool = False,
    source: str | None = None,
    trust_remote_code: bool = False,
) -> ModelSpec:
    """Read a parsed ``config.json`` into a ``ModelSpec`` (no vLLM arguments, HF weight format).

    ``source`` names the file in error messages; by default it is derived from ``local_path`` or
    ``repo_id``/``revision``. Raises ``InputError`` naming the missing or invalid key, or, before
    any other key is read, the architecture the pinned vLLM does not serve (``trust_remote_code``:
    the user passed --trust-remote-code to vLLM, which lets a repo with its own code through).
    """
    if source is None:
        if local_path:
            source = str(Path(local_path) / "config.json")
        elif repo_id:
            source = f"config.json of {repo_id}" + (f"@{revision}" if revision else "")
        else:
            source = "config.json"
    if not isinstance(config, dict):
        raise InputError(
            f"{source} is not a JSON object",
            why=f"It holds {value_kind(config)}",
            fix="use the model's Hugging Face config.json",
        )
    check_served(config, source, trust_remote_code=trust_remote_code)
    architecture = _architecture(config, source)
    reader = _Reader(config, source)
    geometry = _geometry(reader)
    falcon = _is_falcon(config, architecture)
    try:
        return ModelSpec(
            name=name,
            architecture=architecture,
            weights_bytes=weights_bytes,
            max_context=_max_context(reader, falcon),
            attention=geometry,
            dtype=_dtype(reader),
            quantization=_quantization(config),
            repo_id=repo_id,
            revision=revision,
            local_path=local_path,
            gated=gated,
            # Not a preset, so nobody has marked it single-node: vLLM's pipeline parallel across
            # nodes works for the decoder architectures it serves, and the user asked for the group.
            multi_node=True,
            **_budget_figures(config, reader, architecture, geometry.num_layers),
        )
    except ValueError as exc:
        raise InputError(f"Cannot describe the model from {source}", why=str(exc)) from None


def read_config_json(path: Path) -> dict[str, Any]:
    """Parse a ``config.json`` file, raising ``InputError`` if it is missing or not a JSON object."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{path} does not exist",
            why="A model folder must hold the Hugging Face config.json",
            fix="point to a folder with config.json and the weight files",
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"Cannot read {path}", why=str(exc), fix="check the file") from None
    if not isinstance(config, dict):
        raise InputError(f"{path} is not a JSON object", fix="use the model's Hugging Face config.json")
    return config

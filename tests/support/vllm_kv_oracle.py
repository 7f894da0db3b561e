"""Run in a subprocess with vLLM installed (and kaito_runtime/launch/amx_site first on PYTHONPATH):
what vLLM's own ModelConfig says about each model folder (a folder holding only config.json) at
each tensor-parallel size. Reads a JSON list of {"folder", "tps"} on stdin, prints one JSON list.

Figures: layers (get_num_layers), KV heads per rank (get_num_kv_heads), head size
(get_head_size), use_mla, the model dtype vLLM resolves, the sliding window and how many layers
use it (hf_text_config.layer_types, as vLLM's per-layer attention reads it), and whether vLLM
accepts the TP size (verify_with_parallel_config: the attention heads; the KV heads are checked
later, when QKVParallelLinear divides them, so the total is reported for the test to apply that).
"""

from __future__ import annotations

import json
import sys
import traceback


def main() -> None:
    import logging

    logging.disable(logging.WARNING)
    from vllm.config import ModelConfig, ParallelConfig

    cases = json.load(sys.stdin)
    results = []
    for case in cases:
        folder = case["folder"]
        try:
            mc = ModelConfig(model=folder, tokenizer=folder, skip_tokenizer_init=True, dtype="auto")
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            results.append({"folder": folder, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]})
            continue
        text = mc.hf_text_config
        layer_types = getattr(text, "layer_types", None) or []
        per_tp = {}
        for tp in case["tps"]:
            pc = ParallelConfig(tensor_parallel_size=tp)
            try:
                mc.verify_with_parallel_config(pc)
                accepted, why = True, None
            except Exception as exc:  # noqa: BLE001
                accepted, why = False, str(exc)[:300]
            per_tp[str(tp)] = {
                "layers": mc.get_num_layers(pc),
                "kv_heads": mc.get_num_kv_heads(pc),
                "head_size": mc.get_head_size(),
                "accepted": accepted,
                "why": why,
            }
        results.append({
            "folder": folder,
            "use_mla": bool(mc.use_mla),
            "dtype": str(mc.dtype).removeprefix("torch."),
            "sliding_window": mc.get_sliding_window(),
            "sliding_layers": sum(1 for t in layer_types if t == "sliding_attention"),
            "max_model_len": mc.max_model_len,
            "total_kv_heads": mc.get_total_num_kv_heads(),
            "tp": per_tp,
        })
    print("ORACLE " + json.dumps(results))


if __name__ == "__main__":
    main()

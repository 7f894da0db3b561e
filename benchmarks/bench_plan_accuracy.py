"""How close the planner's KV prediction is to what vLLM itself reported at start-up.

Runs the real planner (``plan_launch``, the same call ``kaito-run --dry-run`` makes, with the
observed layout and flags as the user's overrides) on every observation in benchmarks/data/
vllm_memory_observations.yaml whose vLLM version line is the pinned one, or, when there is no
observation of the pinned line, the closest line that has some; planned with that line's
constants from presets/vllm/memory.yaml. Prints per case and for the fitted and held-out halves
(``split``: the held-out third never entered the fit of the constants):

  * mean absolute error of the predicted KV tokens ("GPU KV cache size: N tokens"),
  * the worst over-prediction (a plan that promises more KV than vLLM has),
  * false refusals (the planner says "does not fit" for a layout vLLM ran),

next to the same figures for the baseline estimator the planner used before (KAITO's: weights
x 1.02, 2.3 GiB + 5 % of the weights share per GPU, NVML total). Targets: MAE <= 5 %, no
over-prediction above 5 %, no false refusal.

    python benchmarks/bench_plan_accuracy.py [--observations FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kaito_runtime import settings  # noqa: E402
from kaito_runtime.errors import DoesNotFitError  # noqa: E402
from kaito_runtime.node import skus  # noqa: E402
from kaito_runtime.node.vllm_memory import profile_from_table  # noqa: E402
from kaito_runtime.plan import plan_launch  # noqa: E402
from kaito_runtime.plan.vllm_budget import BudgetModel  # noqa: E402
from kaito_runtime.plan.vllm_budget import budget_model as planner_budget_model  # noqa: E402
from kaito_runtime.types import AttentionGeometry, ModelSpec, PlanOverrides, Topology, VllmMemoryProfile  # noqa: E402
from kaito_runtime.types import GiB  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "vllm_memory_observations.yaml"
TARGET_MAE, TARGET_OVER = 0.05, 0.05


def line_of(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _key(line: str) -> tuple[int, ...]:
    return tuple(int(p) for p in line.split("."))


def choose_line(pinned: str, lines: set[str]) -> str:
    """The pinned line when observed, else the observed line closest to it."""
    target = _key(line_of(pinned))
    return min(lines, key=lambda ln: (abs(_key(ln)[0] - target[0]) * 1000 + abs(_key(ln)[1] - target[1]), ln))


def spec_of(name: str, m: dict) -> ModelSpec:
    """An observed model as the planner sees a model: a ``ModelSpec`` (what a preset or config.json gives)."""
    if "kv_lora_rank" in m:
        attention = AttentionGeometry(m["num_layers"], m["num_attention_heads"], kv_lora_rank=m["kv_lora_rank"],
                                      qk_rope_head_dim=m["qk_rope_head_dim"])
    else:
        attention = AttentionGeometry(m["num_layers"], m["num_attention_heads"], m["num_kv_heads"], m["head_dim"])
    return ModelSpec(
        name=name, architecture=m["architecture"], weights_bytes=int(m["checkpoint_gib"] * GiB),
        max_context=m["max_position_embeddings"], attention=attention, dtype=m["dtype"],
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"], tie_word_embeddings=m["tie_word_embeddings"],
        num_experts=m.get("num_experts"), sliding_window=m.get("sliding_window"),
        sliding_window_layers=m.get("sliding_window_layers", 0), multimodal=bool(m.get("multimodal")),
    )


def budget_model(m: dict, kv_cache_dtype: str, tp: int) -> BudgetModel:
    """The planner's budget view of an observed model (``vllm_budget.budget_model`` on its spec)."""
    return planner_budget_model(spec_of("observed", m), tp, 1 if kv_cache_dtype.startswith("fp8") else 2)


def predict(o: dict, m: dict, profile: VllmMemoryProfile) -> dict:
    """``plan_launch`` on the observed layout: the GPUs by their SKU-table name, the user's flags
    as vLLM got them (TP, PP, utilization, max-model-len, batch budget, eager)."""
    tp, pp = o["tensor_parallel_size"], o["pipeline_parallel_size"]
    inventory = skus.inventory_for_assumed_gpus(f"{tp * pp}x{o['gpu']}")
    overrides = PlanOverrides(
        max_model_len=o["max_model_len"], gpu_memory_utilization=o["gpu_memory_utilization"],
        tensor_parallel_size=tp, pipeline_parallel_size=pp,
        kv_cache_dtype=None if o["kv_cache_dtype"] == "auto" else o["kv_cache_dtype"],
        max_num_batched_tokens=o["max_num_batched_tokens"], max_num_seqs=o["max_num_seqs"],
        enforce_eager=o["enforce_eager"],
    )
    try:
        plan = plan_launch(spec_of(o["model"], m), inventory, Topology(), overrides, profile=profile)
    except DoesNotFitError:
        return {"tokens": 0, "refused": True, "weights_gib": float("nan"), "kv_gib": float("nan"), "cuda_total_gib": float("nan")}
    assert plan.memory is not None and plan.kv_cache_tokens is not None
    return {
        "tokens": plan.kv_cache_tokens,
        "refused": False,
        "weights_gib": plan.memory.weights / GiB,
        "kv_gib": plan.memory.kv_cache / GiB,
        "cuda_total_gib": (plan.memory.cuda_total or 0) / GiB,
    }


def baseline(o: dict, m: dict, nvml_total_gib: float) -> dict:
    """The estimator the planner used before (KAITO's): NVML total, weights x 1.02, 2.3 GiB + 5 %."""
    tp, pp = o["tensor_parallel_size"], o["pipeline_parallel_size"]
    weights = m["checkpoint_gib"] * 1.02 * math.ceil(m["num_layers"] / pp) / m["num_layers"] / tp
    kv = nvml_total_gib * o["gpu_memory_utilization"] - weights - 2.3 - 0.05 * weights
    per_token = budget_model(m, o["kv_cache_dtype"], tp).kv_bytes_per_token_per_layer * math.ceil(m["num_layers"] / pp)
    tokens = max(0, int(kv * GiB // per_token))
    return {"tokens": tokens, "refused": tokens < o["max_model_len"]}


# NVML totals of the observed GPUs (presets/hardware/gpu-skus.yaml memory_mib / 1024)
NVML_TOTAL_GIB = {"H100-80GB": 81559 / 1024}


def summarize(rows: list[dict], field: str) -> dict:
    errs = [r[field + "_err"] for r in rows]
    return {
        "n": len(rows),
        "mae": sum(abs(e) for e in errs) / len(errs) if errs else 0.0,
        "worst_over": max(errs) if errs else 0.0,
        "false_refusals": sum(r[field + "_refused"] for r in rows),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--observations", type=Path, default=DATA)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    data = yaml.safe_load(args.observations.read_text())
    table = yaml.safe_load(settings.vllm_memory_table_path().read_text())
    pinned = str(table["pinned"])
    lines = {line_of(o["vllm_version"]) for o in data["observations"]}
    line = choose_line(pinned, lines)
    profile = profile_from_table(table, line)
    used = [o for o in data["observations"] if line_of(o["vllm_version"]) == line]
    print(f"pinned vLLM {pinned}; observations of line {line} ({len(used)}), planned with the {line} constants"
          + ("" if line == line_of(pinned) else f" (no observation of {line_of(pinned)}: closest line)"))
    print(f"not used (other lines): {sorted(lines - {line})}")
    rows = []
    for o in used:
        m = data["models"][o["model"]]
        got = o["reported"]["kv_cache_tokens"]
        p, b = predict(o, m, profile), baseline(o, m, NVML_TOTAL_GIB[o["gpu"]])
        rows.append({
            "id": o["id"], "split": o["split"], "reported": got, "planner": p["tokens"], "baseline": b["tokens"],
            "planner_err": (p["tokens"] - got) / got, "baseline_err": (b["tokens"] - got) / got,
            "planner_refused": p["refused"], "baseline_refused": b["refused"],
            "weights_pred_gib": p["weights_gib"], "weights_loaded_gib": o["reported"]["model_loading_gib"],
        })
    if not args.json:
        print(f"{'case':62} {'split':7} {'vLLM':>10} {'planner':>10} {'err':>7} {'baseline':>10} {'err':>7}  weights pred/loaded")
        for r in rows:
            print(f"{r['id'][:62]:62} {r['split']:7} {r['reported']:>10,} {r['planner']:>10,} {r['planner_err']*100:+6.1f}% "
                  f"{r['baseline']:>10,} {r['baseline_err']*100:+6.1f}%  {r['weights_pred_gib']:.2f}/{r['weights_loaded_gib']:.2f}"
                  + ("  REFUSED" if r["planner_refused"] else ""))
    summary = {}
    for split in ("fit", "holdout", "all"):
        part = [r for r in rows if split == "all" or r["split"] == split]
        summary[split] = {"planner": summarize(part, "planner"), "baseline": summarize(part, "baseline")}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for split, s in summary.items():
            for who in ("planner", "baseline"):
                v = s[who]
                print(f"{split:8} {who:9} n={v['n']:2}  MAE {v['mae']*100:5.2f} %  worst over-prediction "
                      f"{v['worst_over']*100:+6.2f} %  false refusals {v['false_refusals']}")
    planner = summary["all"]["planner"]
    met = planner["mae"] <= TARGET_MAE and planner["worst_over"] <= TARGET_OVER and planner["false_refusals"] == 0
    print(f"targets (MAE <= 5 %, no over-prediction > 5 %, no false refusal): {'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""max-model-len (issue 12, section 5), each branch on a layout vLLM really ran: the planner with
the constants of the observed vLLM line (0.19, benchmarks/data/vllm_memory_observations.yaml),
so the predicted pool can be held against the "GPU KV cache size" vLLM logged.

  full context fits with the stated margin   -> passed as a number
  it does not, the vLLM has --max-model-len auto -> auto
  it does not, no auto                        -> the longest multiple of 256 that fits with the margin
  the user's value fits                       -> kept
  the user's value does not fit               -> refused (DoesNotFitError, exit 2) with the longest
                                                 that does, the numbers, and layouts that hold it
"""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from benchmarks.bench_plan_accuracy import DATA, spec_of
from kaito_runtime import settings
from kaito_runtime.errors import DoesNotFitError
from tests.support.steps import skus
from tests.support.steps import profile_from_table
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN
from kaito_runtime.types import PlanOverrides, Topology
from tests.support.planner_helpers import decision, plan_launch

OBS = yaml.safe_load(DATA.read_text())
P019 = profile_from_table(yaml.safe_load(settings.vllm_memory_table_path().read_text()), "0.19")
NO_AUTO = dataclasses.replace(P019, figures={**P019.figures, "max_model_len_auto": False})

QWEN_7B_TP1 = "qwen-qwen2-5-7b-i--h100-80gb--tp1pp1dp1--8192-dtbf16"  # vLLM: 1,096,000 tokens, full context 32,768
QWEN_72B_TP2 = "qwen-qwen2-5-72b-instruc--h100-80gb--tp2pp1dp1--8192"  # vLLM: 19,920 tokens, full context 32,768


def _observed(obs_id: str) -> tuple[dict, dict]:
    o = next(o for o in OBS["observations"] if o["id"] == obs_id)
    return o, OBS["models"][o["model"]]


def _plan(obs_id: str, profile=P019, max_model_len: int | None = None, gpus: int | None = None):
    """The planner on the observed GPUs, utilization, batch budget and TP (the context left to it
    unless ``max_model_len``; with ``gpus``, that many GPUs and the layout left to it too)."""
    o, m = _observed(obs_id)
    tp = None if gpus else o["tensor_parallel_size"]
    overrides = PlanOverrides(
        max_model_len=max_model_len, gpu_memory_utilization=o["gpu_memory_utilization"], tensor_parallel_size=tp,
        max_num_batched_tokens=o["max_num_batched_tokens"], max_num_seqs=o["max_num_seqs"],
    )
    inventory = skus.inventory_for_assumed_gpus(f"{gpus or tp}x{o['gpu']}")
    return plan_launch(spec_of(o["model"], m), inventory, Topology(), overrides, profile=profile)


def _reported(obs_id: str) -> int:
    return _observed(obs_id)[0]["reported"]["kv_cache_tokens"]


def test_full_context_that_fits_with_the_margin_is_passed_as_a_number():
    plan = _plan(QWEN_7B_TP1)
    assert plan.max_model_len == 32768 and not plan.max_model_len_auto
    assert plan.kv_cache_tokens == pytest.approx(_reported(QWEN_7B_TP1), rel=0.03)
    assert "within 90% of the" in decision(plan, "max-model-len").reason


def test_full_context_that_does_not_fit_is_auto_where_the_vllm_has_it():
    plan = _plan(QWEN_72B_TP2)
    assert plan.max_model_len is None and plan.max_model_len_auto
    # what vLLM's auto will find: about the 19,920 tokens vLLM logged at this layout
    assert plan.kv_cache_tokens == pytest.approx(_reported(QWEN_72B_TP2), rel=0.03)
    assert "--max-model-len auto" in decision(plan, "max-model-len").reason
    assert plan.context_limit == plan.kv_cache_tokens // CONTEXT_ALIGN * CONTEXT_ALIGN


def test_without_auto_the_longest_aligned_length_that_fits_with_the_margin_is_passed():
    plan = _plan(QWEN_72B_TP2, profile=NO_AUTO)
    reported = _reported(QWEN_72B_TP2)
    assert not plan.max_model_len_auto and plan.max_model_len % CONTEXT_ALIGN == 0
    # at most 90 % of the predicted pool, so below what vLLM really had: vLLM accepts it
    assert 0.8 * reported <= plan.max_model_len <= 0.9 * plan.kv_cache_tokens / 0.99 < reported
    assert "has no --max-model-len auto" in decision(plan, "max-model-len").reason


def test_a_user_length_that_fits_is_kept():
    plan = _plan(QWEN_72B_TP2, max_model_len=8192)  # what vLLM ran
    assert plan.max_model_len == 8192 and not plan.max_model_len_auto
    assert plan.kv_cache_tokens == pytest.approx(_reported(QWEN_72B_TP2), rel=0.03)
    assert decision(plan, "max-model-len").reason.startswith("user value")


def test_a_user_length_near_the_limit_is_kept_with_a_warning_in_the_reason():
    limit = _plan(QWEN_72B_TP2).context_limit
    plan = _plan(QWEN_72B_TP2, max_model_len=limit)
    assert plan.max_model_len == limit
    assert "vLLM refuses it if the prediction is high" in decision(plan, "max-model-len").reason


def test_a_user_length_that_does_not_fit_is_refused_with_the_longest_that_does_and_layouts_that_hold_it():
    with pytest.raises(DoesNotFitError) as info:
        _plan(QWEN_72B_TP2, max_model_len=32768)
    err = info.value
    text = str(err)
    assert err.exit_code == 2
    longest = int(re.search(r"fits with --max-model-len <= (\d+)", text).group(1))
    assert longest % CONTEXT_ALIGN == 0
    assert longest == pytest.approx(_reported(QWEN_72B_TP2), rel=0.03)  # vLLM had 19,920
    assert re.search(r"each GPU needs [\d.]+ GiB of weights .* \+ [\d.]+ GiB KV for 32,768 tokens = [\d.]+ GiB", text)
    assert "offers 75.2 GiB (79.2 GiB CUDA total x 0.95" in text
    # the layouts that hold 32,768: fp8 KV on these two GPUs, or TP 4 (vLLM ran Qwen2-72B-sized
    # Kimi-Dev-72B at TP 4 with 481,296 tokens)
    assert "fits with --kv-cache-dtype fp8" in text
    assert "fits on one node with 4 x NVIDIA H100 80GB HBM3 (TP 4)" in text
    assert _plan(QWEN_72B_TP2, max_model_len=longest).max_model_len == longest
    four = _plan(QWEN_72B_TP2, max_model_len=32768, gpus=4)
    assert four.tensor_parallel_size == 4 and four.max_model_len == 32768
    assert four.kv_cache_tokens == pytest.approx(_reported("moonshotai-kimi-dev-72b--h100-80gb--tp4pp1dp1--8192"), rel=0.03)

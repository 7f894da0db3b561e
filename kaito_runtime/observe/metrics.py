"""The launcher's Prometheus metrics, computed from a ``StartupStatus`` at scrape time.

One custom collector reads one snapshot per scrape, so the figures of a scrape agree with each
other and nothing is updated on a hot path (the downloader only moves its byte count). Every
name is documented in docs/operations.md ("Metrics"); tests/observe checks the two lists agree.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import kaito_runtime
from kaito_runtime.observe.status import TIMED_PHASES, Phase, StartupStatus, UNKNOWN

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name -> help; the collector emits exactly these (plus the process_* metrics of prometheus-client).
METRICS: dict[str, str] = {
    "kaito_launcher_info": "The launcher's version, the model it serves and its role (leader/worker); always 1.",
    "kaito_launcher_start_time_seconds": "Unix time the launcher process started.",
    "kaito_launcher_phase": "1 for the phase the launch is in now, 0 for the others.",
    "kaito_launcher_phase_seconds": "Seconds spent in the current phase so far.",
    "kaito_launcher_phase_duration_seconds": "Seconds each finished phase took (resolve, inventory, plan, weights, group, vllm_start).",
    "kaito_launcher_ready": "1 once vLLM is ready (the leader's readiness check passed; a worker's vLLM runs), else 0.",
    "kaito_launcher_weights_done_bytes": "Bytes of the model's selected files on local disk (-1 before the download starts).",
    "kaito_launcher_weights_total_bytes": "Bytes of the model's selected files (-1 before the download starts).",
    "kaito_launcher_weights_speed_bytes_per_second": "Download speed over about the last 10 s (-1 unknown, 0 when done).",
    "kaito_launcher_weights_remaining_seconds": "Seconds the download still needs at that speed (-1 unknown, 0 when done).",
    "kaito_model_download_speed_bytes_per_second": "KAITO's name for kaito_launcher_weights_speed_bytes_per_second.",
    "kaito_model_download_remaining_seconds": "KAITO's name for kaito_launcher_weights_remaining_seconds.",
    "kaito_launcher_group_size": "Nodes the group should have (1 for a single node).",
    "kaito_launcher_group_members": "Nodes checked in at the leader's store (this one included).",
    "kaito_launcher_group_state": "1 for the group's current state, by name.",
    "kaito_launcher_group_round": "The group's meeting round (1 for the first; 0 on a single node).",
    "kaito_launcher_group_restarts": "Times the group restarted vLLM after a member was lost.",
    "kaito_launcher_plan_kv_cache_tokens": "KV cache capacity in tokens: the plan's prediction (source=plan) and vLLM's report (source=vllm).",
    "kaito_launcher_plan_kv_cache_bytes": "KV cache bytes per GPU (CPU: the KV space): plan and vLLM.",
    "kaito_launcher_plan_weights_bytes": "Weights bytes per GPU (CPU: the checkpoint): plan and vLLM.",
    "kaito_launcher_plan_usable_memory_bytes": "Usable memory per GPU the plan sized against (total x gpu-memory-utilization).",
    "kaito_launcher_vllm_exits": "vLLM main-process exits, by reason (clean, failed, stopped, ready_timeout, group_stopped, not_started).",
}


def _gauge(name: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if labels is None:
        return GaugeMetricFamily(name, METRICS[name], value=value)
    family = GaugeMetricFamily(name, METRICS[name], labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _or_unknown(value: int | float | None) -> float:
    return UNKNOWN if value is None else float(value)


class StatusCollector(Collector):
    def __init__(self, status: StartupStatus) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        snap = self.status.snapshot()
        yield _gauge("kaito_launcher_info", 1.0, {
            "version": kaito_runtime.__version__, "model": snap.model or "", "role": snap.role,
        })
        yield _gauge("kaito_launcher_start_time_seconds", snap.process_started)
        phase = GaugeMetricFamily("kaito_launcher_phase", METRICS["kaito_launcher_phase"], labels=["phase"])
        for p in Phase:
            phase.add_metric([p.value], 1.0 if p is snap.phase else 0.0)
        yield phase
        yield _gauge("kaito_launcher_phase_seconds", snap.phase_seconds)
        durations = GaugeMetricFamily(
            "kaito_launcher_phase_duration_seconds", METRICS["kaito_launcher_phase_duration_seconds"], labels=["phase"]
        )
        for p in TIMED_PHASES:
            if p in snap.durations:
                durations.add_metric([p.value], snap.durations[p])
        yield durations
        yield _gauge("kaito_launcher_ready", 1.0 if snap.ready else 0.0)

        w = snap.weights
        yield _gauge("kaito_launcher_weights_done_bytes", _or_unknown(w.done_bytes))
        yield _gauge("kaito_launcher_weights_total_bytes", _or_unknown(w.total_bytes))
        yield _gauge("kaito_launcher_weights_speed_bytes_per_second", w.speed_bytes_per_second)
        yield _gauge("kaito_launcher_weights_remaining_seconds", w.remaining_seconds)
        yield _gauge("kaito_model_download_speed_bytes_per_second", w.speed_bytes_per_second)
        yield _gauge("kaito_model_download_remaining_seconds", w.remaining_seconds)

        g = snap.group
        yield _gauge("kaito_launcher_group_size", float(g.size if g.size is not None else 1))
        yield _gauge("kaito_launcher_group_members", float(g.members))
        state = GaugeMetricFamily("kaito_launcher_group_state", METRICS["kaito_launcher_group_state"], labels=["state"])
        if g.state is not None:
            state.add_metric([g.state], 1.0)
        yield state
        yield _gauge("kaito_launcher_group_round", float(g.round))
        restarts = CounterMetricFamily("kaito_launcher_group_restarts", METRICS["kaito_launcher_group_restarts"])
        restarts.add_metric([], float(g.restarts))
        yield restarts

        plan = snap.plan
        for name, predicted, reported in (
            ("kaito_launcher_plan_kv_cache_tokens", plan.predicted_kv_tokens, plan.reported_kv_tokens),
            ("kaito_launcher_plan_kv_cache_bytes", plan.predicted_kv_cache_bytes, plan.reported_kv_cache_bytes),
            ("kaito_launcher_plan_weights_bytes", plan.predicted_weights_bytes, plan.reported_weights_bytes),
        ):
            family = GaugeMetricFamily(name, METRICS[name], labels=["source"])
            if predicted is not None:
                family.add_metric(["plan"], float(predicted))
            if reported is not None:
                family.add_metric(["vllm"], float(reported))
            yield family
        usable = GaugeMetricFamily(
            "kaito_launcher_plan_usable_memory_bytes", METRICS["kaito_launcher_plan_usable_memory_bytes"]
        )
        if plan.usable_memory_bytes is not None:
            usable.add_metric([], float(plan.usable_memory_bytes))
        yield usable

        exits = CounterMetricFamily("kaito_launcher_vllm_exits", METRICS["kaito_launcher_vllm_exits"], labels=["reason"])
        for reason, count in snap.exits.items():
            exits.add_metric([reason], float(count))
        yield exits


def registry_for(status: StartupStatus) -> CollectorRegistry:
    """A registry of its own (not the global one): the status collector and the process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(registry)

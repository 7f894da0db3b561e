"""The launch's lines for the operator: the plan as vLLM will get it, the plan check once vLLM
is ready, and a failed vLLM's report. Each takes the values it reports on and a logger."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kaito_runtime.launch import ServeOptions, effective_settings
from kaito_runtime.launch.plan_check import PlanCheck, append_record
from kaito_runtime.launch.vllm_command import VllmLaunch
from kaito_runtime.types import LaunchPlan

FAILURE_TAIL_LINES = 20


@dataclass(frozen=True)
class PhaseTimes:
    """Seconds each phase of a launch took (the "ready in" line shows them)."""

    model: float = 0.0
    inventory: float = 0.0
    plan: float = 0.0
    weights: float = 0.0
    vllm_start: float = 0.0

    def line(self) -> str:
        return (
            f"model {self.model:.2f} s, inventory {self.inventory:.2f} s, plan {self.plan:.2f} s, "
            f"weights {self.weights:.2f} s, vLLM start {self.vllm_start:.1f} s"
        )


def log_plan_summary(serve: ServeOptions, plan: LaunchPlan, built: VllmLaunch, log: logging.Logger) -> None:
    """The plan as vLLM will get it: the effective values, then one line per value that the
    config file or the pass-through arguments changed (with the plan's own value)."""
    settings = effective_settings(serve, plan, built)
    log.info(
        "plan: %s on %s, TP %s x PP %s, max-model-len %s",
        plan.model.name,
        plan.target.upper(),
        settings["tensor-parallel-size"].value,
        settings["pipeline-parallel-size"].value,
        settings["max-model-len"].value,
    )
    for decision in plan.decisions:
        log.info("  %s: %s (%s)", decision.topic, decision.choice, decision.reason)
    for setting in settings.values():
        if setting.overridden:
            log.info("  override: %s", setting.describe())


def log_plan_check(check: PlanCheck, report: Path | None, log: logging.Logger) -> None:
    """One line comparing the plan with vLLM's own memory figures (fields in JSON mode), and
    the record appended to ``report`` so a platform team can collect its own calibration data."""
    log.info("%s", check.line(), extra={"fields": {"plan_check": check.fields()}})
    if report is not None:
        try:
            append_record(check, report)
        except OSError as exc:
            log.warning("cannot append the plan check to %s: %s", report, exc)
    warning = check.warning()
    if warning:
        log.warning("%s", warning)


def log_failure(outcome, plan: LaunchPlan, built: VllmLaunch, ready_timeout: float | None, log: logging.Logger) -> str:
    """A known cause: one line. Otherwise (or only the generic "engine core failed"), vLLM's
    last lines first, because in a long container log the real cause has scrolled away. Returns
    the one line for the termination message: a known cause's own line, else the closing line
    and the last line vLLM printed (often the exception)."""
    from kaito_runtime.launch import failures

    report = failures.failure_report(
        outcome.tail,
        outcome.exit_code,
        plan_hint=failures.FailureContext.from_launch(plan, built),
        tail_lines=FAILURE_TAIL_LINES,
        outcome=outcome.outcome,
        ready_timeout=ready_timeout,
    )
    log.error("%s", report)
    lines = [line for line in report.splitlines() if line.strip()] or ["vLLM failed"]
    return lines[0] if len(lines) == 1 else f"{lines[-1]}; vLLM's last line: {lines[-2]}"

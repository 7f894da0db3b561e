"""vLLM's life under the supervisor, once the command is filled in: the readiness check, the
plan check once vLLM is ready, a second try after a lost port race (one node), one pass per
round of a group, and the cause of the end for the termination message. The launcher's status
(``observe.Observer``, handed in by the API) is told as it goes; this module does not import it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kaito_runtime import logs, termination
from kaito_runtime.launch import plan_check, report, start_line, supervisor
from kaito_runtime.launch.vllm_command import VllmLaunch
from kaito_runtime.types import LaunchPlan

if TYPE_CHECKING:
    from kaito_runtime.launch.group import Group


class Supervision(Protocol):
    """What the request asks of the supervision (the settled request's serve slice)."""

    grace_seconds: float
    ready_timeout: float | None
    plan_report: Path | None


class Watcher(Protocol):
    """What the launcher's own status is told (kaito_runtime.observe.Observer)."""

    def on_vllm_line(self, line: str) -> None: ...
    def reported(self, *, kv_tokens: int | None, kv_cache_gib: float | None, weights_gib: float | None) -> None: ...
    def vllm_ready(self) -> None: ...
    def release_api_port(self, why: str) -> None: ...
    def vllm_starting(self, child_env: Mapping[str, str], *, serves_api: bool) -> None: ...
    def vllm_exited(self, outcome: str, exit_code: int, signalled: bool) -> None: ...
    def port_race_lost(self, tail: Sequence[str], exit_code: int) -> bool: ...


def run_vllm(built: VllmLaunch, child_env: Mapping[str, str], added: Mapping[str, str], *, plan: LaunchPlan,
             model_name: str, is_leader: bool, group: Group | None, serve: Supervision, watcher: Watcher,
             hooks: supervisor.SupervisorHooks, supervise: Callable[..., supervisor.SupervisorResult],
             entered: float, times: report.PhaseTimes, log: logging.Logger) -> int:
    """Start vLLM and supervise it to its end; the process exit code. ``entered``: when the
    launcher began (the "ready in" line counts from it); ``times``: the phases before vLLM."""
    from kaito_runtime.launch.group import end_the_round

    # What vLLM will really use: pass-through arguments and the config file may override ours.
    host, port = built.host, built.port
    served_names = built.served_model_names or (model_name,)
    startup = plan_check.StartupReader()

    def on_ready(seconds: float) -> None:
        check = plan_check.check_plan(plan, startup)
        report.log_plan_check(check, serve.plan_report, log)
        watcher.reported(kv_tokens=check.vllm_kv_tokens, kv_cache_gib=check.vllm_kv_cache_gib,
                         weights_gib=check.vllm_weights_gib)
        watcher.vllm_ready()
        log.info("ready in %.1f s (%s): serving %s on http://%s:%d/v1", time.monotonic() - entered,
                 replace(times, vllm_start=seconds).line(), served_names[0], host, port)
        if group is not None:
            group.serving()

    def on_line(line: str) -> None:
        watcher.on_vllm_line(line)  # first: vLLM binds the API port right after its first lines
        startup.feed(line)

    readiness = None
    if is_leader:
        readiness = supervisor.ReadinessCheck(host=host, port=port, served_name=served_names, api_key=built.api_key)
    log.info("starting vLLM: %s", start_line(built, added))
    with contextlib.ExitStack() as stack:
        standby = None
        if group is not None and group.settings.max_restarts > 0:
            standby = stack.enter_context(NextRound(built.argv, child_env, log))
            group.when_serving(standby.prepare)
        if group is not None and not is_leader:
            from kaito_runtime.launch.worker_health import WorkerHealthServer

            watcher.release_api_port("the worker's health server takes it")
            stack.enter_context(WorkerHealthServer(host, port, lambda: group.health().answer()))
            log.info("worker health: GET http://%s:%d/health (200 while vLLM and the leader's heartbeat are alive)", host, port)
        attempt = 0
        while True:  # a second try after a lost port race (one node); one pass per round of a group
            attempt += 1
            watcher.vllm_starting(child_env, serves_api=is_leader)
            outcome = supervise(
                built.argv, child_env, ready=readiness, grace_seconds=serve.grace_seconds,
                # A headless worker has no server to become ready; it lives as long as the group does.
                ready_timeout=serve.ready_timeout if readiness is not None else None,
                on_ready=on_ready, log=log, on_line=on_line, hooks=hooks,
                write_line=logs.child_line_writer(),  # JSON mode: each vLLM line one object
                standby=standby.take() if standby is not None else None,
            )
            watcher.vllm_exited(outcome.outcome, outcome.exit_code, outcome.signal_received is not None)
            if (attempt == 1 and group is None and outcome.signal_received is None and outcome.ready_after is None
                    and watcher.port_race_lost(outcome.tail, outcome.exit_code)):
                log.warning("vLLM bound port %d before the launcher had let go of it; starting it again", port)
                continue
            if group is None:
                break
            code = end_the_round(group, outcome, plan, built, serve.ready_timeout, log)
            if code is not None:
                return code
            group.meet_again()  # the same plan, weights and command: vLLM starts again
            log.info("starting vLLM (round %d): %s", group.round, start_line(built, added))
    cause = None  # for the termination message: why vLLM ended, when it did not end well or was stopped
    if outcome.signal_received is not None:
        how = "stopped cleanly" if outcome.exit_code == 0 else supervisor.describe_exit_code(outcome.exit_code)
        cause = f"stopped by {signal.Signals(outcome.signal_received).name} (vLLM {how})"
    elif outcome.exit_code != 0:
        cause = report.log_failure(outcome, plan, built, serve.ready_timeout, log)
    if cause:
        termination.note_cause(cause)
    # A forwarded stop ends with the supervisor's own "vLLM stopped in N s (exit N)" line.
    return outcome.exit_code


class NextRound:
    """A group with a restart budget keeps a standby vLLM for its next round on every node
    (launch/vllm_standby.py: vLLM's own command and environment, its imports done, paused before
    it starts anything). It is started once the round serves (the leader's vLLM answers), so it
    never slows a start; a restart starts from it instead of importing torch and vLLM again. It
    costs one idle process (vLLM's imports, several hundred MB), killed when the launcher ends."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: logging.Logger) -> None:
        self._argv, self._env, self._log = tuple(argv), dict(env), log
        self._standby: supervisor.Standby | None = None

    def prepare(self) -> None:
        """From the supervising thread, once this round serves."""
        if self._standby is None:
            self._standby = supervisor.start_standby(self._argv, self._env, self._log)
            if self._standby is not None:
                self._log.info("standby vLLM for a next round started (pid %d): it imports now and waits; a restart "
                               "starts from it", self._standby.proc.pid)

    def take(self) -> supervisor.Standby | None:
        standby, self._standby = self._standby, None
        return standby

    def __enter__(self) -> NextRound:
        return self

    def __exit__(self, *exc: object) -> None:
        standby = self.take()
        if standby is not None:
            standby.discard()

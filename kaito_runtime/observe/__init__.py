"""Start-up you can watch: the launcher's own HTTP (/metrics, /startupz, /health), its phase in
the log lines, and the hand-over of the API port to vLLM.

The API owns one ``Observer`` per launch and tells it what happens (``enter(Phase.WEIGHTS)``,
``vllm_started()``, ...); the weights step reports through ``status.weights.watch`` and the
group through ``status.group`` (a ``GroupReport``). This package imports no step: it is the
edge where the launch is served, wired in by the API (docs/operations.md, "Watching start-up").

The API port hand-over (measured in tests/observe/test_handover_e2e.py, docs/operations.md):
the launcher listens there until vLLM's first output line, then stops listening; vLLM binds
the port right after its banner and listens once its engine is built. A probe sees the
launcher's 503 with the phase, then "connection refused" while vLLM builds its engine (vLLM
binds before it listens, and a bound port cannot be shared without patching vLLM), then
vLLM's own answers. Should vLLM lose that race (it printed and bound within the moment the
launcher needed to let go), it exits with "Address already in use"; ``port_race_lost`` says so
and the API starts it once more, the port already free.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from kaito_runtime import logs
from kaito_runtime.observe.server import StatusServer
from kaito_runtime.observe.status import (
    UNKNOWN,
    VLLM_EXIT_REASONS,
    GroupReport,
    Phase,
    PlanFigures,
    StartupStatus,
    WeightsProgress,
    vllm_exit_reason,
)
from kaito_runtime.types import GiB, LaunchPlan

__all__ = [
    "DEFAULT_METRICS_PORT",
    "GroupReport",
    "Observer",
    "ObserveOptions",
    "Phase",
    "PlanFigures",
    "StartupStatus",
    "StatusServer",
    "UNKNOWN",
    "VLLM_EXIT_REASONS",
    "WeightsProgress",
    "vllm_exit_reason",
]

DEFAULT_METRICS_PORT = 5090
ADDRESS_IN_USE = "Address already in use"
# vLLM prints nothing at these settings before it binds: the port is let go before it starts.
_QUIET_LOGGING = ("WARNING", "ERROR", "CRITICAL")

log = logging.getLogger("kaito_runtime")


@dataclass(frozen=True)
class ObserveOptions:
    """``metrics_port`` 0: no metrics port; ``startup_http`` False: the API port stays free
    until vLLM takes it (no /health 503 before)."""

    host: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT
    startup_http: bool = True


class Observer:
    """One launch's status and its servers. Thread-safe where the supervisor's threads call it
    (``on_vllm_line`` from the output thread)."""

    def __init__(self, options: ObserveOptions, *, status: StartupStatus | None = None) -> None:
        self.options = options
        self.status = status or StartupStatus(on_phase=logs.set_phase)
        self.metrics: StatusServer | None = None
        self.holder: StatusServer | None = None  # the API port until vLLM takes it
        self._lock = threading.Lock()
        self._vllm_started_at: float | None = None
        self._release_on_output = False

    # --- the servers ---------------------------------------------------------------------------

    def start(self) -> Observer:
        """Serve the metrics port (from now until ``close``); a port that cannot be bound is a
        warning, not a failed launch."""
        if self.options.metrics_port:
            server = StatusServer(self.status, self.options.host, self.options.metrics_port, "metrics")
            try:
                self.metrics = server.start()
            except OSError as error:
                log.warning("metrics port %d on %s cannot be served (%s): no /metrics or /startupz there; "
                            "choose another with --metrics-port (KAITO_METRICS_PORT), 0 turns it off",
                            self.options.metrics_port, self.options.host, error.strerror or error)
        return self

    def holds(self, host: str, port: int) -> bool:
        """Whether the launcher listens on ``host:port`` now (so that port is known free for vLLM)."""
        with self._lock:
            held = self.holder
        return held is not None and held.serving and (held.host, held.requested_port) == (host, port)

    def hold_api_port(self, host: str, port: int) -> None:
        """Answer /health (503), /startupz and /metrics on vLLM's port until ``release_api_port``.
        Moves there from a port held before; a port that cannot be bound raises OSError."""
        if not self.options.startup_http:
            return
        with self._lock:
            held = self.holder
            if held is not None and held.serving and (held.host, held.requested_port) == (host, port):
                return
        if held is not None:
            held.release()
        server = StatusServer(self.status, host, port, "api", registry=self.metrics.registry if self.metrics else None)
        server.start()
        with self._lock:
            self.holder = server

    def release_api_port(self, why: str) -> None:
        with self._lock:
            held, self.holder = self.holder, None
            self._release_on_output = False
        if held is not None and held.serving:
            taken = held.release()
            log.debug("API port %d let go (%s) in %.1f ms", held.requested_port, why, taken * 1000)

    def close(self) -> None:
        self.release_api_port("the launcher is leaving")
        if self.metrics is not None:
            self.metrics.release()
            self.metrics = None

    def __enter__(self) -> Observer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.enter(Phase.EXITED)
        self.close()

    # --- what happens --------------------------------------------------------------------------

    def enter(self, phase: Phase) -> None:
        self.status.enter(phase)

    def describe(self, *, model: str | None = None, role: str | None = None) -> None:
        self.status.describe(model=model, role=role)

    def plan(self, plan: LaunchPlan) -> None:
        memory = plan.memory
        if plan.target == "cpu":
            kv_bytes = plan.cpu_kv_cache_gib * GiB if plan.cpu_kv_cache_gib is not None else None
            figures = PlanFigures(target="cpu", predicted_kv_tokens=plan.kv_cache_tokens,
                                  predicted_kv_cache_bytes=kv_bytes, predicted_weights_bytes=plan.model.weights_bytes)
        else:
            figures = PlanFigures(
                target="gpu", predicted_kv_tokens=plan.kv_cache_tokens,
                predicted_kv_cache_bytes=memory.kv_cache if memory else None,
                predicted_weights_bytes=memory.weights if memory else None,
                usable_memory_bytes=memory.usable if memory else None,
            )
        self.status.set_plan(figures)

    def reported(self, *, kv_tokens: int | None, kv_cache_gib: float | None, weights_gib: float | None) -> None:
        """What vLLM said about its memory (the plan check's figures)."""
        self.status.set_reported(
            kv_tokens=kv_tokens,
            kv_cache_bytes=int(kv_cache_gib * GiB) if kv_cache_gib is not None else None,
            weights_bytes=int(weights_gib * GiB) if weights_gib is not None else None,
        )

    def vllm_starting(self, child_env: Mapping[str, str], *, serves_api: bool) -> None:
        """vLLM is about to start. Its server binds the API port right after its first lines
        (its banner): the port is let go at its first output line (``on_vllm_line``), or now when
        vLLM is set to print nothing first. A headless worker's vLLM binds no API port."""
        self.status.enter(Phase.VLLM_START)
        with self._lock:
            self._vllm_started_at = time.monotonic()
        if not serves_api:
            return
        quiet = (child_env.get("VLLM_LOGGING_LEVEL", "INFO").upper() in _QUIET_LOGGING
                 or child_env.get("VLLM_CONFIGURE_LOGGING", "1") == "0")
        if quiet:
            self.release_api_port("vLLM starts and prints nothing before it binds")
        else:
            with self._lock:
                self._release_on_output = True

    def on_vllm_line(self, line: str) -> None:
        if self._release_on_output:  # read without the lock first: this runs for every line
            self.release_api_port("vLLM's first output line")

    def vllm_ready(self) -> None:
        self.status.enter(Phase.READY)

    def vllm_exited(self, outcome: str, exit_code: int, signalled: bool) -> None:
        self.status.vllm_exited(vllm_exit_reason(outcome, exit_code, signalled))
        self.status.enter(Phase.STOPPING)

    def port_race_lost(self, tail: Sequence[str], exit_code: int) -> bool:
        """Whether vLLM failed because it bound the API port before the launcher let go of it."""
        if exit_code == 0 or self._vllm_started_at is None:
            return False
        return any(ADDRESS_IN_USE in line for line in tail[-40:]) and self.options.startup_http

    def on_signal(self, signum: int) -> None:  # from a signal handler: a flag-sized change only
        self.status.enter(Phase.STOPPING)



def hold_port(observer: Observer, host: str, port: int, check: Callable[[str, int], None]) -> None:
    """The port check (``check``: a busy port is exit 2 in a second) and the launcher's hold on
    ``host:port`` until vLLM takes it; a port it already holds is known free."""
    if observer.holds(host, port):
        return
    observer.release_api_port("vLLM's port moved")
    check(host, port)
    try:
        observer.hold_api_port(host, port)
    except OSError:
        check(host, port)  # taken in between: the same clear error
        raise


class ObservedHooks:
    """The supervisor's hooks (launch.supervisor.SupervisorHooks, duck-typed): the group's when
    there is one (``inner``), and what the launcher's own status learns from them (a headless
    worker is ready once its vLLM runs; a signal means stopping)."""

    def __init__(self, inner, observer: Observer, *, worker: bool) -> None:
        self._inner, self._observer, self._worker = inner, observer, worker

    def started(self, alive, pgid: int) -> None:
        if self._inner is not None:
            self._inner.started(alive, pgid)
        if self._worker:
            self._observer.vllm_ready()

    def signalled(self, signum: int) -> None:
        if self._inner is not None:
            self._inner.signalled(signum)
        self._observer.on_signal(signum)

    def holds(self, signum: int) -> bool:
        return self._inner is not None and self._inner.holds(signum)

    def stop_request(self):
        return self._inner.stop_request() if self._inner is not None else None

    def exited(self, returncode: int) -> None:
        if self._inner is not None:
            self._inner.exited(returncode)

    def nothing_to_drain(self) -> bool:
        return self._inner is not None and self._inner.nothing_to_drain()

    def tick(self) -> None:
        if self._inner is not None:
            self._inner.tick()

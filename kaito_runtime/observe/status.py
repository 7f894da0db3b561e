"""What the launcher is doing now, kept in one place that /startupz, /metrics and the log lines read.

``StartupStatus`` is written by the API as it orders the steps (``enter(Phase.WEIGHTS)``, ...),
by the weights step through ``WeightsProgress.watch`` (the downloader's byte count), by the group
through ``GroupReport`` and by the supervisor's callbacks (ready, vLLM's exit). Readers take a
consistent copy under one lock; nothing here does I/O, so a scrape never waits on a step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Protocol

UNKNOWN = -1.0  # KAITO's convention for a download gauge that has no value yet


class Phase(Enum):
    """Where a launch is. The timed phases are the steps of ``api.run``, in order."""

    STARTING = "starting"  # the process runs, no step has begun
    RESOLVE = "resolve"  # which model, which files (hub metadata, config.json)
    INVENTORY = "inventory"  # this node's GPUs / CPUs and its place in the group
    PLAN = "plan"  # the layout, the memory budget, vLLM's command
    WEIGHTS = "weights"  # the weights on local disk (downloaded, resumed or reused)
    GROUP = "group"  # multi-node: the group meets at the leader's store
    VLLM_START = "vllm_start"  # vLLM started, not ready yet
    READY = "ready"  # vLLM answers (the leader's readiness check passed; a worker's vLLM runs)
    STOPPING = "stopping"  # a stop was asked for (signal, the group) or vLLM exited
    EXITED = "exited"  # the launcher is leaving


TIMED_PHASES = (Phase.RESOLVE, Phase.INVENTORY, Phase.PLAN, Phase.WEIGHTS, Phase.GROUP, Phase.VLLM_START)

# Why vLLM's main process ended, as the exit counter labels it.
VLLM_EXIT_REASONS = ("clean", "failed", "stopped", "ready_timeout", "group_stopped", "not_started")


def vllm_exit_reason(outcome: str, exit_code: int, signalled: bool) -> str:
    """The counter's label for a supervised run's end: ``outcome`` is the supervisor's
    (exited, stopped, ready_timeout, group_stopped); 127 without a signal is a failed start."""
    if outcome in ("ready_timeout", "group_stopped"):
        return outcome
    if outcome == "stopped" or signalled:
        return "stopped"
    if exit_code == 127:
        return "not_started"
    return "clean" if exit_code == 0 else "failed"


class ByteCount(Protocol):
    """What the downloader moves with every chunk (weights.progress.TransferCount)."""

    def snapshot(self) -> tuple[int, int, float | None]: ...


@dataclass(frozen=True)
class WeightsFigures:
    done_bytes: int | None  # bytes of the selected files on disk (None: no download seen yet)
    total_bytes: int | None
    speed_bytes_per_second: float  # UNKNOWN before the first bytes
    remaining_seconds: float  # UNKNOWN while the speed is unknown or zero

    def fields(self) -> dict[str, object]:
        return {
            "done_bytes": self.done_bytes,
            "total_bytes": self.total_bytes,
            "speed_bytes_per_second": round(self.speed_bytes_per_second, 1),
            "remaining_seconds": round(self.remaining_seconds, 1),
        }


class WeightsProgress:
    """The download's figures. Speed: bytes received over about the last ``window_s`` seconds
    (KAITO samples every 2 s over 5 samples, 10 s); remaining: bytes left / that speed."""

    def __init__(self, *, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._window_s = window_s
        self._count: ByteCount | None = None
        self._total: int | None = None
        self._samples: list[tuple[float, int]] = []
        self._finished = False

    def watch(self, count: ByteCount, total: int) -> None:
        """The weights step calls this when a download starts (``count`` moves per chunk)."""
        with self._lock:
            self._count, self._total, self._finished = count, total, False
            self._samples = [(self._clock(), count.snapshot()[1])]

    def finish(self) -> None:
        """The weights are on disk (downloaded or reused): nothing remains."""
        with self._lock:
            self._finished = True

    def figures(self) -> WeightsFigures:
        with self._lock:
            if self._count is None:
                if self._finished:
                    return WeightsFigures(None, None, 0.0, 0.0)
                return WeightsFigures(None, None, UNKNOWN, UNKNOWN)
            held, received, _ = self._count.snapshot()
            total = self._total or 0
            done = min(max(held, 0), total)
            if self._finished:
                return WeightsFigures(total, total, 0.0, 0.0)
            now = self._clock()
            self._samples.append((now, received))
            # keep the newest sample at or before the window's start, so the rate spans the window
            while len(self._samples) > 2 and self._samples[1][0] <= now - self._window_s:
                self._samples.pop(0)
            t_old, b_old = self._samples[0]
            if received == 0 or now <= t_old:
                return WeightsFigures(done, total, UNKNOWN, UNKNOWN)
            speed = max(received - b_old, 0) / (now - t_old)
            remaining = (total - done) / speed if speed > 0 else UNKNOWN
            return WeightsFigures(done, total, speed, remaining)


@dataclass(frozen=True)
class GroupFigures:
    size: int | None = None  # nodes the group should have
    members: int = 0  # nodes checked in (this one included)
    state: str | None = None  # the group's own state name
    round: int = 0  # the meeting round (the group counts from 1; 0: no group)
    restarts: int = 0  # times the group restarted vLLM after a member was lost

    def fields(self) -> dict[str, object]:
        return {"size": self.size, "members": self.members, "state": self.state, "round": self.round,
                "restarts": self.restarts}


class GroupReport:
    """Where the group (kaito_runtime.launch.group) reports what /metrics and /startupz show.

    Every method is cheap and thread-safe; call them from wherever the group's state changes::

        report.expect(nnodes)             # the group's size is known
        report.checked_in(members)        # members checked in so far (this node included)
        report.state("meeting")           # the group's state enum's value, whenever it changes
        report.new_round(n)               # an elastic group meets again (round n, from 0)
        report.restarted()                # vLLM was restarted with the group
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._figures = GroupFigures()
        self._source: Callable[[], Mapping[str, object]] | None = None

    def follow(self, source: Callable[[], Mapping[str, object]]) -> None:
        """Read the figures from ``source`` at every scrape (any of size, members, state, round,
        restarts); what it does not return keeps the value reported through the methods."""
        with self._lock:
            self._source = source

    def _set(self, **changes: object) -> None:
        with self._lock:
            self._figures = replace(self._figures, **changes)

    def expect(self, size: int) -> None:
        self._set(size=int(size))

    def checked_in(self, members: int) -> None:
        self._set(members=int(members))

    def state(self, name: str) -> None:
        self._set(state=str(name))

    def new_round(self, number: int) -> None:
        self._set(round=int(number))

    def restarted(self) -> None:
        with self._lock:
                self._figures = replace(self._figures, restarts=self._figures.restarts + 1)

    def figures(self) -> GroupFigures:
        with self._lock:
            figures, source = self._figures, self._source
        if source is None:
            return figures
        try:
            read = dict(source())
        except Exception:  # noqa: BLE001 - a scrape must not fail because the group is mid-change
            return figures
        known = {k: read[k] for k in ("size", "members", "state", "round", "restarts") if read.get(k) is not None}
        if "state" in known:
            known["state"] = str(known["state"])
        return replace(figures, **known)


@dataclass(frozen=True)
class PlanFigures:
    """The plan's predictions beside what vLLM reported at start-up (None: not known)."""

    target: str | None = None  # gpu or cpu
    predicted_kv_tokens: int | None = None
    predicted_kv_cache_bytes: int | None = None  # per GPU (CPU: the KV space)
    predicted_weights_bytes: int | None = None  # per GPU (CPU: the checkpoint)
    usable_memory_bytes: int | None = None  # per GPU: total x gpu-memory-utilization (GPU plans only)
    reported_kv_tokens: int | None = None
    reported_kv_cache_bytes: int | None = None
    reported_weights_bytes: int | None = None

    def fields(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items()}


@dataclass
class _State:
    phase: Phase = Phase.STARTING
    phase_started: float = 0.0
    durations: dict[Phase, float] = field(default_factory=dict)
    ready: bool = False
    exits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VLLM_EXIT_REASONS, 0))
    plan: PlanFigures = field(default_factory=PlanFigures)
    model: str | None = None
    role: str = "leader"


class StartupStatus:
    """The launch's phase, its timings and its progress; see the module docstring."""

    def __init__(
        self,
        *,
        process_started: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        # re-entrant: a signal handler (``Observer.on_signal``) may enter a phase while the main
        # thread is inside a method here
        self._lock = threading.RLock()
        self._clock, self._wall = clock, wall_clock
        # Unix time the process started (psutil's create_time; elapsed counts from there).
        self.process_started = process_started if process_started is not None else _process_start(wall_clock)
        self._state = _State(phase_started=clock())
        self._on_phase = on_phase
        self.weights = WeightsProgress(clock=clock)
        self.group = GroupReport()
        if on_phase is not None:
            on_phase(Phase.STARTING.value)

    # --- writers -------------------------------------------------------------------------------

    def enter(self, phase: Phase) -> None:
        """Close the current phase (its time is recorded if it is a timed one) and open ``phase``.
        Entering the phase already current does nothing."""
        with self._lock:
            state = self._state
            if state.phase is phase:
                return
            now = self._clock()
            if state.phase in TIMED_PHASES:
                state.durations[state.phase] = state.durations.get(state.phase, 0.0) + now - state.phase_started
            state.phase, state.phase_started = phase, now
            if phase is Phase.READY:
                state.ready = True
            elif phase in (Phase.STOPPING, Phase.EXITED):
                state.ready = False
        if self._on_phase is not None:
            self._on_phase(phase.value)

    def record(self, phase: Phase, seconds: float) -> None:
        """Set a timed phase's duration measured elsewhere (the planning steps time themselves)."""
        with self._lock:
            self._state.durations[phase] = max(float(seconds), 0.0)

    def describe(self, *, model: str | None = None, role: str | None = None) -> None:
        with self._lock:
            if model is not None:
                self._state.model = model
            if role is not None:
                self._state.role = role

    def vllm_exited(self, reason: str) -> None:
        if reason not in VLLM_EXIT_REASONS:
            raise ValueError(f"unknown vLLM exit reason {reason!r}")
        with self._lock:
            self._state.exits[reason] += 1

    def set_plan(self, figures: PlanFigures) -> None:
        with self._lock:
            reported = self._state.plan
            self._state.plan = PlanFigures(
                **{**figures.fields(), **{k: v for k, v in reported.fields().items() if k.startswith("reported_")}}
            )

    def set_reported(self, *, kv_tokens: int | None, kv_cache_bytes: int | None, weights_bytes: int | None) -> None:
        with self._lock:
            self._state.plan = replace(self._state.plan, reported_kv_tokens=kv_tokens,
                                       reported_kv_cache_bytes=kv_cache_bytes, reported_weights_bytes=weights_bytes)

    # --- readers -------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        with self._lock:
            return self._state.phase

    @property
    def ready(self) -> bool:
        with self._lock:
            return self._state.ready

    def snapshot(self) -> Snapshot:
        with self._lock:
            state = self._state
            now = self._clock()
            durations = dict(state.durations)
            current = now - state.phase_started
            snap = Snapshot(
                phase=state.phase,
                phase_seconds=current,
                elapsed_seconds=max(self._wall() - self.process_started, 0.0),
                durations=durations,
                ready=state.ready,
                exits=dict(state.exits),
                plan=state.plan,
                model=state.model,
                role=state.role,
                process_started=self.process_started,
                weights=WeightsFigures(None, None, UNKNOWN, UNKNOWN),
                group=GroupFigures(),
            )
        # read outside our lock: each has its own
        return snap.with_progress(self.weights.figures(), self.group.figures())

    def startupz(self) -> tuple[int, dict[str, object]]:
        """(HTTP status, body) of /startupz: 200 once ready, else 503."""
        snap = self.snapshot()
        return (200 if snap.ready else 503), snap.body()


@dataclass(frozen=True)
class Snapshot:
    phase: Phase
    phase_seconds: float
    elapsed_seconds: float
    durations: dict[Phase, float]
    ready: bool
    exits: dict[str, int]
    plan: PlanFigures
    model: str | None
    role: str
    process_started: float
    weights: WeightsFigures
    group: GroupFigures

    def with_progress(self, weights: WeightsFigures, group: GroupFigures) -> Snapshot:
        return replace(self, weights=weights, group=group)

    def body(self) -> dict[str, object]:
        return {
            "phase": self.phase.value,
            "ready": self.ready,
            "elapsed_seconds": round(self.elapsed_seconds, 3),
            "phase_seconds": round(self.phase_seconds, 3),
            "phases": {p.value: round(self.durations[p], 3) for p in TIMED_PHASES if p in self.durations},
            "model": self.model,
            "role": self.role,
            "progress": {"weights": self.weights.fields(), "group": self.group.fields()},
            "plan": self.plan.fields(),
            "vllm_exits": {k: v for k, v in self.exits.items() if v},
        }


def _process_start(wall_clock: Callable[[], float]) -> float:
    try:
        import psutil

        return float(psutil.Process().create_time())
    except Exception:  # noqa: BLE001 - a status without the process's start still works
        return wall_clock()

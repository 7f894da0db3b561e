"""vLLM's life under the supervisor (launch.vllm_run) with a recorded supervisor and watcher: a
lost port race starts vLLM once more, readiness reports the plan check and the "ready in" line,
and a failed vLLM's code and cause are what the launcher ends with."""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

import pytest

from kaito_runtime import termination
from kaito_runtime.launch.report import PhaseTimes
from kaito_runtime.launch.supervisor import SupervisorHooks, SupervisorResult
from kaito_runtime.launch.vllm_command import VllmLaunch
from kaito_runtime.launch.vllm_run import run_vllm
from kaito_runtime.types import LaunchPlan, Topology
from tests.support.planner_helpers import tiny_model

LOG = logging.getLogger("kaito_runtime")
PLAN = LaunchPlan(model=tiny_model(), target="cpu", topology=Topology(), kv_cache_tokens=10)
BUILT = VllmLaunch(argv=("vllm", "serve", "/w/tiny"), host="127.0.0.1", port=5123)
KV_LINE = "INFO CPU KV cache size: 10 tokens"


@dataclass(frozen=True)
class Serve:
    grace_seconds: float = 5.0
    ready_timeout: float | None = None
    plan_report: None = None


@dataclass
class Watcher:
    events: list[str] = field(default_factory=list)
    race_lost: bool = False

    def on_vllm_line(self, line):
        self.events.append(f"line {line}")

    def reported(self, *, kv_tokens, kv_cache_gib, weights_gib):
        self.events.append(f"reported {kv_tokens}")

    def vllm_ready(self):
        self.events.append("ready")

    def release_api_port(self, why):
        self.events.append("release")

    def vllm_starting(self, child_env, *, serves_api):
        self.events.append(f"starting serves_api={serves_api}")

    def vllm_exited(self, outcome, exit_code, signalled):
        self.events.append(f"exited {exit_code}")

    def port_race_lost(self, tail, exit_code):
        return self.race_lost and exit_code != 0


def _run(watcher: Watcher, results: list[SupervisorResult], *, ready: bool = False) -> tuple[int, list[dict]]:
    calls: list[dict] = []

    def supervise(argv, env, **kw):
        calls.append(kw)
        if ready:
            kw["on_line"](KV_LINE)
            kw["on_ready"](2.5)
        return results[len(calls) - 1]

    code = run_vllm(BUILT, {"A": "1"}, {}, plan=PLAN, model_name="tiny", is_leader=True, group=None, serve=Serve(),
                    watcher=watcher, hooks=SupervisorHooks(), supervise=supervise, entered=0.0,
                    times=PhaseTimes(weights=1.0), log=LOG)
    return code, calls


@pytest.fixture(autouse=True)
def no_cause():
    termination._reset_for_tests()
    yield
    termination._reset_for_tests()


def test_a_lost_port_race_starts_vllm_once_more_and_only_once():
    lost = SupervisorResult(exit_code=1, ready_after=None, tail=("OSError: [Errno 98] Address already in use",), signal_received=None)
    watcher = Watcher(race_lost=True)
    code, calls = _run(watcher, [lost, lost])
    assert code == 1 and len(calls) == 2
    assert watcher.events == ["starting serves_api=True", "exited 1", "starting serves_api=True", "exited 1"]
    assert calls[0]["ready"].port == 5123 and calls[0]["grace_seconds"] == 5.0


def test_ready_reports_the_plan_check_and_the_ready_line(caplog):
    done = SupervisorResult(exit_code=0, ready_after=2.5, tail=(), signal_received=signal.SIGTERM)
    watcher = Watcher()
    with caplog.at_level(logging.INFO, logger="kaito_runtime"):
        code, _ = _run(watcher, [done], ready=True)
    assert code == 0
    assert watcher.events == ["starting serves_api=True", f"line {KV_LINE}", "reported 10", "ready", "exited 0"]
    ready = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready in ")]
    assert len(ready) == 1 and "weights 1.00 s, vLLM start 2.5 s): serving tiny on http://127.0.0.1:5123/v1" in ready[0]
    assert termination.cause() == "stopped by SIGTERM (vLLM stopped cleanly)"


def test_a_failed_vllm_ends_the_launcher_with_its_code_and_a_cause():
    failed = SupervisorResult(exit_code=3, ready_after=None, tail=("RuntimeError: boom",), signal_received=None)
    code, calls = _run(Watcher(), [failed])
    assert code == 3 and len(calls) == 1
    assert termination.cause() == "vLLM exited with code 3; the cause is in its last lines above; vLLM's last line: RuntimeError: boom"


class Rounds:
    """A leader's group with a restart budget: round 1 ends with a lost member and meets again,
    round 2 ends as asked."""

    rank = 0

    def __init__(self) -> None:
        from types import SimpleNamespace

        self.settings = SimpleNamespace(max_restarts=1)
        self.round, self.served, self.meets_again = 1, 0, False
        self.on_serving = None

    def serving(self) -> None:
        self.served += 1

    def when_serving(self, callback) -> None:
        self.on_serving = callback

    def end_round(self, *, vllm_exit: str, signalled: bool):
        from kaito_runtime.launch.group import StopKind, StopNotice

        self.meets_again = self.round == 1
        if self.meets_again:
            return StopNotice(1, StopKind.LOST, "rank 1 was lost", restart=True)
        return StopNotice(0, StopKind.REQUESTED, "rank 0 was asked to stop")

    def meet_again(self) -> None:
        self.round += 1

    def leave(self) -> None:
        pass


def test_a_group_with_a_budget_starts_its_next_round_from_a_standby_started_once_it_served(tmp_path):
    import sys

    (tmp_path / "prog.py").write_text("print('hi')\n")
    built = VllmLaunch(argv=(sys.executable, str(tmp_path / "prog.py")), host="127.0.0.1", port=5123)
    group = Rounds()
    calls: list[dict] = []

    def supervise(argv, env, **kw):
        calls.append(kw)
        kw["on_ready"](2.5)
        assert group.served == len(calls)  # the leader's group hears that its vLLM answers
        group.on_serving()  # the supervisor's tick, from its own thread
        if len(calls) == 1:
            return SupervisorResult(exit_code=137, ready_after=2.5, tail=(), signal_received=None, outcome="group_stopped")
        return SupervisorResult(exit_code=0, ready_after=2.5, tail=(), signal_received=None, outcome="group_stopped")

    code = run_vllm(built, {"A": "1"}, {}, plan=PLAN, model_name="tiny", is_leader=True, group=group, serve=Serve(),
                    watcher=Watcher(), hooks=SupervisorHooks(), supervise=supervise, entered=0.0,
                    times=PhaseTimes(weights=1.0), log=LOG)
    assert code == 0 and len(calls) == 2
    assert calls[0]["standby"] is None  # round 1 starts plainly
    standby = calls[1]["standby"]  # round 2 gets the standby started once round 1 served
    try:
        assert standby is not None and standby.argv == built.argv and standby.env == {"A": "1"}
    finally:
        standby.discard()
    # the standby started once round 2 served was killed when the launcher's run ended
    second = [p for p in psutil_children() if str(tmp_path / "prog.py") in " ".join(p.cmdline())]
    assert second == []


def psutil_children():
    import psutil

    return [p for p in psutil.Process().children() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_clean_end_notes_no_cause_and_a_stop_that_ended_badly_says_how():
    clean = SupervisorResult(exit_code=0, ready_after=None, tail=(), signal_received=None)
    code, _ = _run(Watcher(), [clean])
    assert code == 0 and termination.cause() is None
    stopped = SupervisorResult(exit_code=137, ready_after=None, tail=(), signal_received=signal.SIGTERM)
    code, _ = _run(Watcher(), [stopped])
    assert code == 137
    assert termination.cause().startswith("stopped by SIGTERM (vLLM ") and "stopped cleanly" not in termination.cause()

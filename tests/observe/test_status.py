"""The launch's status: phases and their durations, download figures, the group's report, the
exit reasons and the /startupz body (units, with a hand-moved clock)."""

from __future__ import annotations

import pytest

from kaito_runtime.observe import status as st
from kaito_runtime.observe.status import Phase, StartupStatus, WeightsProgress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Count:
    """What the downloader's TransferCount answers: (held, received, last arrival)."""

    def __init__(self, held: int = 0) -> None:
        self.held, self.received = held, 0

    def add(self, n: int) -> None:
        self.held += n
        self.received += n

    def snapshot(self) -> tuple[int, int, float | None]:
        return self.held, self.received, None


def test_each_timed_phase_records_its_duration_and_the_current_one_its_elapsed_time():
    clock = Clock()
    seen: list[str] = []
    status = StartupStatus(process_started=0.0, clock=clock, wall_clock=lambda: 10.0, on_phase=seen.append)
    for phase, seconds in ((Phase.RESOLVE, 1.0), (Phase.INVENTORY, 0.5), (Phase.PLAN, 0.25), (Phase.WEIGHTS, 30.0),
                           (Phase.VLLM_START, 40.0)):
        status.enter(phase)
        clock.now += seconds
    status.enter(Phase.READY)
    clock.now += 7.0
    snap = status.snapshot()
    assert snap.durations == {Phase.RESOLVE: 1.0, Phase.INVENTORY: 0.5, Phase.PLAN: 0.25, Phase.WEIGHTS: 30.0,
                              Phase.VLLM_START: 40.0}
    assert snap.phase is Phase.READY and snap.phase_seconds == 7.0 and snap.ready
    assert snap.elapsed_seconds == 10.0
    assert seen == ["starting", "resolve", "inventory", "plan", "weights", "vllm_start", "ready"]


def test_startupz_is_503_before_ready_200_once_ready_and_503_again_when_stopping():
    status = StartupStatus(process_started=0.0)
    assert status.startupz()[0] == 503
    status.enter(Phase.WEIGHTS)
    code, body = status.startupz()
    assert code == 503 and body["phase"] == "weights" and body["ready"] is False
    status.enter(Phase.READY)
    code, body = status.startupz()
    assert code == 200 and body["ready"] is True
    status.enter(Phase.STOPPING)
    assert status.startupz()[0] == 503


def test_entering_the_current_phase_again_changes_nothing():
    clock = Clock()
    status = StartupStatus(process_started=0.0, clock=clock)
    status.enter(Phase.PLAN)
    clock.now += 2
    status.enter(Phase.PLAN)
    clock.now += 3
    status.enter(Phase.WEIGHTS)
    assert status.snapshot().durations[Phase.PLAN] == 5


def test_weights_speed_and_remaining_are_unknown_until_bytes_arrive_then_remaining_falls():
    clock = Clock()
    progress = WeightsProgress(clock=clock, window_s=10.0)
    assert progress.figures().remaining_seconds == st.UNKNOWN
    count = Count(held=100)  # a resumed partial: 100 bytes already on disk
    progress.watch(count, total=1100)
    first = progress.figures()
    assert (first.done_bytes, first.total_bytes) == (100, 1100)
    assert first.speed_bytes_per_second == st.UNKNOWN and first.remaining_seconds == st.UNKNOWN
    remaining = []
    for _ in range(5):
        clock.now += 1.0
        count.add(100)
        figures = progress.figures()
        assert figures.speed_bytes_per_second == pytest.approx(100.0)
        remaining.append(figures.remaining_seconds)
    assert remaining == sorted(remaining, reverse=True) and remaining[-1] == pytest.approx(5.0)
    progress.finish()
    done = progress.figures()
    assert (done.done_bytes, done.speed_bytes_per_second, done.remaining_seconds) == (1100, 0.0, 0.0)


def test_a_stalled_download_has_unknown_remaining_time_once_the_window_has_passed():
    clock = Clock()
    progress = WeightsProgress(clock=clock, window_s=10.0)
    count = Count()
    progress.watch(count, total=1000)
    clock.now += 1
    count.add(100)
    assert progress.figures().remaining_seconds == pytest.approx(9.0)
    for _ in range(12):
        clock.now += 1
        progress.figures()
    assert progress.figures().speed_bytes_per_second == 0.0
    assert progress.figures().remaining_seconds == st.UNKNOWN


def test_a_reused_copy_has_nothing_remaining():
    progress = WeightsProgress()
    progress.finish()
    figures = progress.figures()
    assert figures.remaining_seconds == 0.0 and figures.done_bytes is None


def test_the_group_report_keeps_what_the_group_says():
    status = StartupStatus(process_started=0.0)
    report = status.group
    report.expect(3)
    report.checked_in(2)
    report.state("meeting")
    report.new_round(1)
    report.restarted()
    report.restarted()
    assert status.snapshot().group == st.GroupFigures(size=3, members=2, state="meeting", round=1, restarts=2)
    assert status.startupz()[1]["progress"]["group"]["restarts"] == 2


@pytest.mark.parametrize(
    ("outcome", "code", "signalled", "reason"),
    [
        ("exited", 0, False, "clean"),
        ("exited", 1, False, "failed"),
        ("exited", 127, False, "not_started"),
        ("stopped", 0, True, "stopped"),
        ("exited", 143, True, "stopped"),
        ("ready_timeout", 124, False, "ready_timeout"),
        ("group_stopped", 22, False, "group_stopped"),
    ],
)
def test_vllm_exit_reasons(outcome, code, signalled, reason):
    assert st.vllm_exit_reason(outcome, code, signalled) == reason
    status = StartupStatus(process_started=0.0)
    status.vllm_exited(reason)
    assert status.snapshot().exits[reason] == 1


def test_an_unknown_exit_reason_is_refused():
    with pytest.raises(ValueError):
        StartupStatus(process_started=0.0).vllm_exited("bored")


def test_the_plan_figures_keep_what_vllm_reported_when_the_plan_is_set_again():
    status = StartupStatus(process_started=0.0)
    status.set_reported(kv_tokens=10, kv_cache_bytes=20, weights_bytes=30)
    status.set_plan(st.PlanFigures(target="gpu", predicted_kv_tokens=11, usable_memory_bytes=99))
    plan = status.snapshot().plan
    assert (plan.predicted_kv_tokens, plan.reported_kv_tokens, plan.usable_memory_bytes) == (11, 10, 99)

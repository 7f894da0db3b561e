"""What a node says about its group when asked (a worker's ``GET /health``, the log lines):
healthy or not, why, and where the group stands (its state, its round, the restarts spent).

A worker is healthy while its vLLM runs, the leader's heartbeat is fresh and no stop notice
stands (also while it drains: asked to stop, its vLLM serves the leader's drain); the body names the group's state and round either way, so a probe's output in
``kubectl describe pod`` says what the group is doing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class GroupState(Enum):
    """Where this node's group is; the one state that drives the owner (launch/group/member.py)."""

    MEETING = "meeting"  # checking in for a round, waiting for the leader's verdict
    RUNNING = "running"  # released: vLLM runs, heartbeats go both ways
    DRAINING = "draining"  # asked to stop: the leader's vLLM finishes its requests, a worker's waits for it
    RESTARTING = "restarting"  # a member was lost; this node stopped its vLLM to meet again
    ENDING = "ending"  # a stop notice stands (ours or a peer's); vLLM is being stopped
    ENDED = "ended"  # this node has left the group


@dataclass(frozen=True)
class HealthReport:
    healthy: bool
    reason: str  # "ok" or why not
    state: GroupState
    round: int
    restarts: int  # restarts this node has spent

    def body(self) -> str:
        return f"{self.reason} (group {self.state.value}, round {self.round}, restarts {self.restarts})"

    def answer(self) -> tuple[bool, str]:
        """The form the worker's health server takes."""
        return self.healthy, self.body()


def judge_health(*, state: GroupState, round_: int, restarts: int, rank: int, stop_reason: str | None,
                 vllm_alive: bool, leader_silent_s: float | None, peer_timeout_s: float,
                 max_restarts: int = 0) -> HealthReport:
    """Pure: the answer for the given snapshot (``leader_silent_s`` None on the leader itself).

    A group that restarts in place (restarting, or meeting again after round 1) is healthy: its
    launcher is at work and every wait has a deadline; a liveness probe that failed here would
    have the kubelet recreate the container and lose what the restart keeps."""
    if state is GroupState.RESTARTING or (state is GroupState.MEETING and round_ > 1):
        return HealthReport(True, f"restarting in place (restarts spent here {restarts} of {max_restarts})",
                            state, round_, restarts)
    if state is GroupState.DRAINING and stop_reason is None and vllm_alive:
        # asked to stop, serving the leader's drain: a failed liveness probe here would kill it early
        return HealthReport(True, "draining: vLLM serves the leader's drain", state, round_, restarts)
    if stop_reason is not None:
        reason = stop_reason
    elif state is not GroupState.RUNNING:
        reason = f"the group is {state.value}"
    elif not vllm_alive:
        reason = f"vLLM on rank {rank} is not running"
    elif leader_silent_s is not None and leader_silent_s > peer_timeout_s:
        reason = f"no heartbeat from the leader (rank 0) for over {peer_timeout_s:g} s"
    else:
        return HealthReport(True, "ok", state, round_, restarts)
    return HealthReport(False, reason, state, round_, restarts)


__all__ = ["GroupState", "HealthReport", "judge_health"]

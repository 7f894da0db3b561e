"""The group's calls for one launch, through a real store on loopback: what the leader publishes
is what a --join worker learns, a worker outside the leader's node count is told why, a single
node has no group, and a bad secret file fails before any group exists. The end of a round
(a stand-in group): the termination message gets the cause of the end the pod has, not of a
failure the group restarted from."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from kaito_runtime import termination
from kaito_runtime.errors import GroupMismatchError, InputError
from kaito_runtime.launch.group import (
    GroupSecret, StopKind, StopNotice, before_the_group, end_the_round, for_launch, group_secret, join_the_leader,
    open_for_workers,
)
from kaito_runtime.types import PlanOverrides, Topology
from tests.support.group_helpers import free_port_pair

LOG = logging.getLogger("test-group-launching")
SECRET = GroupSecret(b"0123456789abcdef-the-group-secret", "test")


@dataclass(frozen=True)
class Asked:  # the settled request's group slice, as launch.group.GroupAsked reads it
    nnodes: int | None = None
    node_rank: int | None = None
    leader_address: str | None = "127.0.0.1"
    master_port: int | None = None
    rendezvous_timeout: float | None = 5
    peer_timeout: float | None = None
    join: bool = False
    secret_file: str | None = None
    max_restarts: int = 0


@dataclass(frozen=True)
class Model:  # the settled request's model slice, as open_for_workers reads it
    preset: str | None = None
    model: str | None = "models/tiny-llama"
    revision: str | None = "abc123"
    served_model_name: str | None = "tiny"


def _leader(port: int, nnodes: int = 2):
    topo = Topology(nnodes=nnodes, node_rank=0, leader_address="127.0.0.1", master_port=port)
    return for_launch(Asked(nnodes=nnodes, node_rank=0, master_port=port), topo, SECRET, {}, LOG)


def test_what_the_leader_publishes_is_what_a_join_worker_learns_without_the_leaders_cores():
    port = free_port_pair()
    leader = _leader(port)
    overrides = PlanOverrides(cpu_cores="0-3", max_model_len=256, tensor_parallel_size=1)
    open_for_workers(leader, Model(), overrides, ("--max-num-seqs", "4"))
    try:
        learned = join_the_leader(Asked(node_rank=1, master_port=port, join=True), {}, SECRET, LOG)
    finally:
        leader.store.close()
    assert (learned.model, learned.revision, learned.served_model_name, learned.nnodes) == ("models/tiny-llama", "abc123", "tiny", 2)
    assert learned.overrides == PlanOverrides(max_model_len=256, tensor_parallel_size=1)  # cores stay each node's own
    assert learned.vllm_args == ("--max-num-seqs", "4")
    assert (learned.leader_address, learned.master_port) == ("127.0.0.1", port)


def test_a_join_worker_whose_rank_is_outside_the_leaders_node_count_is_told_why():
    port = free_port_pair()
    leader = _leader(port)
    open_for_workers(leader, Model(preset=None, revision=None, served_model_name=None), PlanOverrides(), ())
    try:
        with pytest.raises(GroupMismatchError) as caught:
            join_the_leader(Asked(node_rank=3, master_port=port, join=True), {}, SECRET, LOG)
    finally:
        leader.store.close()
    assert caught.value.exit_code == 2
    assert "rank 3 is outside the leader's group of 2 nodes (ranks 0..1)" in caught.value.message


def test_a_join_without_a_leader_address_says_where_to_set_it():
    with pytest.raises(InputError) as caught:
        join_the_leader(Asked(leader_address=None, node_rank=1, master_port=29500, join=True), {}, None, LOG)
    assert "--join needs the leader's address" in caught.value.message


def test_one_node_has_no_group_and_reads_no_secret(tmp_path):
    topo = Topology(nnodes=1, node_rank=0, leader_address=None, master_port=29500)
    missing = str(tmp_path / "no-such-secret")
    assert for_launch(Asked(nnodes=1), topo, None, {}, LOG) is None
    assert before_the_group(Asked(nnodes=1, secret_file=missing), {}) is None
    open_for_workers(None, Model(), PlanOverrides(), ())  # nothing to open


def test_a_bad_secret_file_fails_before_any_group_exists(tmp_path):
    missing = str(tmp_path / "no-such-secret")
    with pytest.raises(InputError) as caught:
        group_secret(Asked(nnodes=2, node_rank=0, secret_file=missing), {})
    assert missing in caught.value.message + (caught.value.fix or "") + (caught.value.why or "")


def test_a_workers_weights_progress_reads_as_one_phrase():
    from kaito_runtime.launch.group import weights_progress

    @dataclass(frozen=True)
    class WeightsFigures:  # the launcher's weights figures (observe.status), as the phrase reads them
        done_bytes: int | None
        total_bytes: int | None
        speed_bytes_per_second: float
        remaining_seconds: float

    assert weights_progress(WeightsFigures(1_000_000_000, 4_000_000_000, 35e6, 85.7)) == \
        "downloading weights: 1.00 of 4.00 GB (25 %, 35.0 MB/s)"
    assert weights_progress(WeightsFigures(0, 4_000_000_000, -1.0, -1.0)) == "downloading weights: 0.00 of 4.00 GB (0 %)"
    assert weights_progress(WeightsFigures(4_000_000_000, 4_000_000_000, 0.0, 0.0)) == "weights on disk (4.00 GB)"
    assert weights_progress(WeightsFigures(None, None, -1.0, -1.0)).startswith("weights step: no download under way")


class _RoundEnded:
    """A stand-in for a Group whose round has just ended with ``stop`` (rank 1, one restart)."""

    def __init__(self, stop: StopNotice, *, meets_again: bool) -> None:
        self.rank, self.settings, self.meets_again = 1, SimpleNamespace(max_restarts=1), meets_again
        self._stop, self.left = stop, False

    def end_round(self, *, vllm_exit: str, signalled: bool) -> StopNotice:
        return self._stop

    def leave(self) -> None:
        self.left = True


@pytest.fixture
def vllm_killed(monkeypatch):
    """vLLM on this node was killed; its failure report's line is a fixed text."""
    import kaito_runtime.launch.report as report

    monkeypatch.setattr(report, "log_failure", lambda *args: "vLLM exited with code 137")
    termination._reset_for_tests()
    yield SimpleNamespace(outcome="exited", exit_code=137, signal_received=None)
    termination._reset_for_tests()


def test_a_failure_the_group_restarts_from_notes_no_termination_cause_and_a_spent_budget_is_named(vllm_killed):
    first = StopNotice(1, StopKind.LOST, "vLLM on rank 1 exited (killed by SIGKILL); rank 1 restarts the group (1 of 1)",
                       by=1, restart=True)
    assert end_the_round(_RoundEnded(first, meets_again=True), vllm_killed, None, None, None, LOG) is None
    assert termination.cause() is None  # the group met again: this failure is not why the pod ends

    spent = StopNotice(1, StopKind.LOST, "vLLM on rank 1 exited (killed by SIGKILL); rank 1 has spent its 1 restart",
                       by=1, restart=False)
    group = _RoundEnded(spent, meets_again=False)
    assert end_the_round(group, vllm_killed, None, None, None, LOG) == 22
    assert group.left
    assert termination.cause() == ("rank 1: vLLM on rank 1 exited (killed by SIGKILL); rank 1 has spent its 1 restart; "
                                   "vLLM exited with code 137")

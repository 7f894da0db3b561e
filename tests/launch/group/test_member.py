"""The group's owner (launch/group/member.py) on a real TCPStore on loopback, without vLLM: the
meeting, heartbeats, a silent peer, a frozen leader, the stop notice (announced first), forged
messages, and what a worker's /health says."""

from __future__ import annotations

from dataclasses import replace

import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from kaito_runtime.errors import GroupMismatchError, RendezvousTimeoutError
from kaito_runtime.launch.group import Group, GroupSecret, GroupSettings, GroupState, NodeFacts, StopKind, public_vllm_args
from kaito_runtime.launch.group.store import GroupStore, StopNotice, StoreUnreachable, plan_fields
from kaito_runtime.launch.worker_health import WorkerHealthServer
from tests.support.group_helpers import free_port_pair, helper_process
from kaito_runtime.types import Topology

LOG = logging.getLogger("test-group-member")
PGID = os.getpgid(0)  # a process group with nothing stopped in it (the hung check looks there)
SECRET = GroupSecret(b"0123456789abcdef-the-group-secret", "test")
FACTS = NodeFacts(resources={"cpu_cores": 1}, kaito_runtime_version="0.1", vllm_version="0.32.0",
                  plan_fields=plan_fields("tiny", "abc", ["--max-model-len", "256"]))


def make(rank: int, master_port: int, *, nnodes: int = 2, peer_timeout_s: float = 1.5, secret=SECRET,
         rendezvous_timeout_s: float = 10) -> Group:
    topo = Topology(nnodes=nnodes, node_rank=rank, leader_address="127.0.0.1", master_port=master_port)
    return Group(GroupSettings(topo, rendezvous_timeout_s=rendezvous_timeout_s, peer_timeout_s=peer_timeout_s,
                               secret=secret, beat_interval_s=0.1), env={}, log=LOG)


def meet_all(groups: list[Group], facts: dict[int, NodeFacts] | None = None) -> dict[int, object]:
    results: dict[int, object] = {}

    def run(index: int, group: Group) -> None:
        try:
            results[index] = group.meet((facts or {}).get(index, FACTS))
        except Exception as exc:  # handed to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, g)) for i, g in enumerate(groups)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def pair():
    port = free_port_pair()
    leader, worker = make(0, port), make(1, port)
    leader.open()
    results = meet_all([leader, worker])
    assert not any(isinstance(r, Exception) for r in results.values()), results
    yield leader, worker
    for group in (worker, leader):
        group._done.set()
    leader.store.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_beating_peers_keep_the_group_running_and_the_worker_healthy(pair):
    leader, worker = pair
    leader.hooks.started(lambda: True, PGID)
    worker.hooks.started(lambda: True, PGID)
    time.sleep(2.5)  # longer than the peer timeout: only the heartbeats keep it alive
    assert leader.hooks.stop_request() is None and worker.hooks.stop_request() is None
    assert worker.health().answer() == (True, "ok (group running, round 1, restarts 0)")
    assert worker.figures() == {"size": 2, "state": "running", "round": 1, "restarts": 0}
    assert leader.state is GroupState.RUNNING


def test_a_silent_worker_is_lost_and_the_leader_does_not_wait_for_its_ack(pair):
    leader, worker = pair
    leader.hooks.started(lambda: True, PGID)
    worker.hooks.started(lambda: True, PGID)
    time.sleep(0.5)
    worker._done.set()  # its launcher froze: no more beats, no more reading
    assert wait_for(lambda: leader.hooks.stop_request() is not None, timeout=5)
    request = leader.hooks.stop_request()
    assert request.exit_code == 22 and "rank 1" in request.reason and "no heartbeat" in request.reason
    answers = _record_acknowledgements(leader)
    stop = leader.end_round(vllm_exit="exit 0", signalled=False)
    assert stop.kind is StopKind.LOST and stop.rank == 1
    assert answers == []  # no linger for an acknowledgement that cannot come: the silent rank is not asked


def _record_acknowledgements(group) -> list[bool]:
    """What the leader's linger reads from the store, answer by answer (the events, not the clock)."""
    answers: list[bool] = []
    real = group.store.acknowledged

    def acknowledged(round_: int, rank: int) -> bool:
        answers.append(bool(real(round_, rank)))
        return answers[-1]

    group.store.acknowledged = acknowledged
    return answers


class Vllm:
    """A stand-in for one node's vLLM main process: alive until ``exit`` (what the supervisor
    tells the hooks when the real one exits)."""

    def __init__(self, group: Group) -> None:
        self.group, self.alive = group, True
        group.hooks.started(lambda: self.alive, PGID)

    def exit(self, returncode: int = 0) -> None:
        self.alive = False
        self.group.hooks.exited(returncode)


def test_a_leader_asked_to_stop_drains_and_posts_its_notice_only_after_its_vllm_exited(pair):
    leader, worker = pair
    leader_vllm, _ = Vllm(leader), Vllm(worker)
    assert not leader.hooks.holds(signal.SIGTERM)  # the leader's SIGTERM goes to its vLLM at once: it drains
    leader.hooks.signalled(signal.SIGTERM)
    assert leader.state is GroupState.DRAINING
    assert wait_for(lambda: worker._peer_states.get(0) == "draining")
    time.sleep(2.5)  # longer than the peer timeout (1.5 s): the draining leader keeps beating
    assert worker.hooks.stop_request() is None  # the worker's vLLM keeps serving the leader's drain
    assert leader.hooks.stop_request() is None  # its own stop is the signal's, not the group's
    assert leader.store.stop_notice(1) is None  # no notice while its vLLM drains
    leader_vllm.exit(0)
    assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=2)
    request = worker.hooks.stop_request()
    assert request.exit_code == 0 and request.reason == "rank 0 was asked to stop (SIGTERM)"
    answers = _record_acknowledgements(leader)
    assert leader.end_round(vllm_exit="exit 0", signalled=True).kind is StopKind.REQUESTED
    assert answers and answers[-1] is True  # the worker confirmed: the linger ended on it, not on its deadline
    assert worker.end_round(vllm_exit="exit 0", signalled=False).kind is StopKind.REQUESTED
    assert not leader.meets_again and not worker.meets_again
    leader.leave()
    assert leader.state is GroupState.ENDED


def test_a_worker_asked_to_stop_with_its_leader_holds_its_vllm_until_the_leaders_notice(pair):
    leader, worker = pair
    leader_vllm, worker_vllm = Vllm(leader), Vllm(worker)
    assert worker.hooks.holds(signal.SIGTERM) and not worker.hooks.holds(signal.SIGINT)
    worker.hooks.signalled(signal.SIGTERM)  # the kubelet signals every pod of the group at once
    leader.hooks.signalled(signal.SIGTERM)
    assert worker.state is GroupState.DRAINING
    time.sleep(2.5)
    assert worker.hooks.stop_request() is None and worker_vllm.alive
    assert leader.hooks.stop_request() is None and leader.store.stop_notice(1) is None
    leader_vllm.exit(0)
    assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=2)
    assert worker.hooks.stop_request().exit_code == 0
    worker_vllm.exit(0)  # released: the supervisor forwarded the SIGTERM, vLLM stopped
    assert worker.end_round(vllm_exit="exit 0", signalled=True).by == 0  # the leader's notice stands
    assert leader.end_round(vllm_exit="exit 0", signalled=True).kind is StopKind.REQUESTED


def test_a_worker_asked_alone_makes_the_leader_drain_and_holds_until_it_has(pair):
    leader, worker = pair
    leader_vllm, worker_vllm = Vllm(leader), Vllm(worker)
    worker.hooks.signalled(signal.SIGTERM)  # only the worker's pod is deleted
    assert wait_for(lambda: leader.hooks.stop_request() is not None, timeout=2)
    request = leader.hooks.stop_request()
    assert request.exit_code == 0 and request.reason == "rank 1 was asked to stop: the leader drains first"
    assert leader.state is GroupState.DRAINING
    time.sleep(0.5)
    assert worker.hooks.stop_request() is None and leader.store.stop_notice(1) is None
    leader_vllm.exit(0)  # drained
    assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=2)
    assert worker.hooks.stop_request().exit_code == 0
    assert leader.store.stop_notice(1) == StopNotice(0, StopKind.REQUESTED, "rank 1 was asked to stop", by=0)
    worker_vllm.exit(0)
    assert not leader.meets_again and not worker.meets_again


def test_a_worker_whose_vllm_exits_while_the_leader_drains_stops_with_it_not_as_a_loss(pair):
    leader, worker = pair
    Vllm(leader)
    worker_vllm = Vllm(worker)
    leader.hooks.signalled(signal.SIGTERM)
    assert wait_for(lambda: worker._peer_states.get(0) == "draining")
    worker_vllm.exit(1)  # the leader's engine shut down and let the headless worker go
    request = worker.hooks.stop_request()  # asked once more by the supervisor after the exit
    assert request is not None and request.exit_code == 0
    stop = worker.end_round(vllm_exit="exit 1", signalled=False)
    assert stop.kind is StopKind.REQUESTED and stop.rank == 0 and not worker.meets_again


def test_a_leader_lost_while_it_drains_is_still_a_lost_member(pair):
    leader, worker = pair
    Vllm(leader), Vllm(worker)
    leader.hooks.signalled(signal.SIGTERM)
    assert wait_for(lambda: worker._peer_states.get(0) == "draining")
    leader._done.set()  # its launcher froze mid-drain: no more beats
    assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=5)
    request = worker.hooks.stop_request()
    assert request.exit_code == 22 and "rank 0" in request.reason and "no heartbeat" in request.reason


def test_a_worker_whose_vllm_exited_tells_the_group_before_any_clean_up(pair):
    leader, worker = pair
    leader.hooks.started(lambda: True, PGID)
    worker.hooks.started(lambda: True, PGID)
    worker.hooks.exited(-9)  # the supervisor calls this before it sweeps vLLM's leftovers
    assert wait_for(lambda: leader.hooks.stop_request() is not None, timeout=2)  # well before the peer timeout
    assert leader.hooks.stop_request().reason == "vLLM on rank 1 exited (killed by SIGKILL)"
    assert worker.hooks.stop_request() is None  # its own vLLM is gone already
    assert worker.end_round(vllm_exit="killed by SIGKILL", signalled=False) == StopNotice(
        1, StopKind.LOST, "vLLM on rank 1 exited (killed by SIGKILL)", by=1)


def test_a_forged_stop_notice_and_a_forged_check_in_change_nothing(pair):
    leader, worker = pair
    leader.hooks.started(lambda: True, PGID)
    worker.hooks.started(lambda: True, PGID)
    port = leader.topology.group_store_port
    for secret in (None, GroupSecret(b"a-guess-at-the-group-secret", "x")):
        forger = GroupStore.join("127.0.0.1", port, timeout_s=5, secret=secret)
        forger.announce_stop(1, StopNotice(0, StopKind.REQUESTED, "forged: rank 0 was asked to stop", by=0))
        forger.check_in(leader.store.check_ins(1, 1)[0][1])  # a copy of rank 1's check-in, re-signed wrongly
    time.sleep(1.0)
    assert leader.hooks.stop_request() is None and worker.hooks.stop_request() is None
    assert worker.health().healthy and leader.state is GroupState.RUNNING
    assert [n for n, _ in leader.store.check_ins(1, 1)] == [1]  # no duplicate rank either
    assert leader.store.forged > 0


LEADER = """
import logging, os, sys, time
from kaito_runtime.launch.group import Group, GroupSettings, NodeFacts, plan_fields
from kaito_runtime.types import Topology
logging.basicConfig(level=logging.INFO)
topo = Topology(nnodes=2, node_rank=0, leader_address="127.0.0.1", master_port=int(sys.argv[1]))
group = Group(GroupSettings(topo, rendezvous_timeout_s=20, peer_timeout_s=3, beat_interval_s=0.1), env={}, log=logging.getLogger("leader"))
group.open()
print("open", flush=True)
group.meet(NodeFacts({"cpu_cores": 1}, "0.1", "0.32.0", plan_fields("tiny", "abc", ["--max-model-len", "256"])))
group.hooks.started(lambda: True, os.getpgid(0))
print("running", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_frozen_leader_is_noticed_by_the_worker_within_the_peer_timeout():
    port = free_port_pair()
    with helper_process(LEADER, str(port), ready="open") as leader:
        worker = make(1, port, peer_timeout_s=3, secret=None)
        worker.meet(FACTS)
        assert leader.stdout.readline().strip() == "running"
        worker.hooks.started(lambda: True, PGID)
        time.sleep(1.0)
        assert worker.hooks.stop_request() is None
        os.kill(leader.pid, signal.SIGSTOP)  # the leader's launcher frozen (or its network cut)
        # the deadline: the peer timeout and a few beats
        assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=3 + 1.5)
        request = worker.hooks.stop_request()
        assert request.exit_code == 22 and "rank 0" in request.reason
        assert not worker.health().healthy

        def leave() -> None:  # no store call may wait on the frozen leader; the spent connection fails at once
            worker.end_round(vllm_exit="exit 0", signalled=False)
            with pytest.raises(StoreUnreachable, match="no answer"):
                worker.store.heartbeat(1, 0)
            left.set()

        left = threading.Event()
        threading.Thread(target=leave, daemon=True).start()
        assert left.wait(timeout=2)


def test_a_worker_outside_the_leaders_node_count_is_told_why():
    port = free_port_pair()
    leader, stray = make(0, port, rendezvous_timeout_s=2), make(3, port, nnodes=4, rendezvous_timeout_s=2)
    leader.open()
    results = meet_all([leader, stray])
    assert isinstance(results[1], GroupMismatchError) and results[1].exit_code == 2
    assert "rank 3 is outside the leader's group of 2 nodes (ranks 0..1)" in results[1].message
    assert isinstance(results[0], RendezvousTimeoutError) and "rank 1 never checked in" in results[0].message
    leader.store.close()


@pytest.mark.parametrize("taken", [0, 1])
def test_the_leader_checks_vllms_master_port_and_the_store_port_naming_master_port(taken):
    from kaito_runtime.errors import StorePortTakenError

    port = free_port_pair()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + taken))
        holder.listen()
        with pytest.raises(StorePortTakenError) as caught:
            make(0, port).check_ports()
    assert caught.value.exit_code == 2 and f"Port {port + taken} (" in caught.value.message
    assert "--master-port" in caught.value.message and "--port " not in caught.value.message
    make(0, port).check_ports()  # free again: no error


def test_the_published_request_holds_no_secret():
    args = ["--api-key", "sk-live-123", "--max-model-len", "256", "--api-key=sk-2", "--hf-token", "hf_abc", "--x", "secret-v"]
    assert public_vllm_args(args, ("secret-v",)) == ["--max-model-len", "256", "--x"]


@pytest.mark.parametrize("spelling", [
    ["--api_key=K"], ["--api_key", "K"], ["--API-KEY=K"], ["--api-key", "K", "K2"], ["--hf_token", "K"],
    ["--hf-token=K"], ["--HF_TOKEN", "K", "K2"],
])
def test_the_published_request_drops_every_spelling_of_a_secret_flag(spelling):
    published = public_vllm_args(["--max-model-len", "256", *spelling, "--enforce-eager"])
    assert published == ["--max-model-len", "256", "--enforce-eager"]
    assert not any("K" in token for token in published)


def _status(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_worker_health_answers_200_while_healthy_and_503_with_the_reason():
    state = {"healthy": (True, "ok")}
    with WorkerHealthServer("127.0.0.1", 0, lambda: state["healthy"]) as server:
        assert _status(server.port) == (200, "ok\n")
        state["healthy"] = (False, "no heartbeat from the leader (rank 0) for over 15 s")
        assert _status(server.port) == (503, "no heartbeat from the leader (rank 0) for over 15 s\n")
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{server.port}/v1/models", timeout=5)
        assert caught.value.code == 404


def test_a_lost_member_within_the_budget_restarts_the_group_in_the_next_round_and_only_it_spends():
    port = free_port_pair()
    leader, worker = make(0, port), make(1, port)
    leader.settings = replace(leader.settings, max_restarts=1)
    worker.settings = replace(worker.settings, max_restarts=1)
    leader.open()
    try:
        assert not any(isinstance(r, Exception) for r in meet_all([leader, worker]).values())
        for group in (leader, worker):
            group.hooks.started(lambda: True, PGID)
        worker.hooks.exited(-9)
        assert wait_for(lambda: leader.hooks.stop_request() is not None)
        assert worker.end_round(vllm_exit="killed by SIGKILL", signalled=False).restart
        assert leader.end_round(vllm_exit="exit 0", signalled=False).restart
        assert leader.meets_again and worker.meets_again
        assert (leader.restarts, worker.restarts) == (0, 1)  # only the node whose vLLM failed spends
        assert worker.health().answer()[0]  # restarting in place is not a reason for a liveness restart
        again = {}
        threads = [threading.Thread(target=lambda g=g: again.__setitem__(g.rank, g.meet_again())) for g in (leader, worker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert leader.round == worker.round == 2 and len(again) == 2
        assert leader.store.current_round() == 2
        for group in (leader, worker):
            group.hooks.started(lambda: True, PGID)
        assert "round 2" in worker.health().answer()[1]
        worker.hooks.exited(-9)  # the budget is spent now: the loss ends the group
        assert wait_for(lambda: leader.hooks.stop_request() is not None)
        stop = worker.end_round(vllm_exit="killed by SIGKILL", signalled=False)
        assert not stop.restart and "rank 1 has spent its 1 restart" in stop.reason
        leader.end_round(vllm_exit="exit 0", signalled=False)
        assert not leader.meets_again and not worker.meets_again
        request = leader.hooks.stop_request()  # the worker's loss, as the leader was told of it above
        assert request is not None and request.exit_code == 22 and "rank 1" in request.reason
    finally:
        leader.store.close()


def test_rounds_never_mix_a_stale_check_in_and_a_twice_checked_in_rank_is_refused():
    from kaito_runtime.launch.group.store import CheckIn, judge

    port = free_port_pair()
    leader = make(0, port)
    leader.open()
    try:
        stale = CheckIn(rank=1, host_ip="127.0.0.1", hostname="old", resources={}, kaito_runtime_version="0.1",
                        vllm_version="0.32.0", plan_fields=FACTS.plan_fields, weights_complete=True, round=1)
        leader.store.check_in(stale)
        assert leader.store.arrivals(2, 2) == {}  # round 2 sees nothing of round 1
        assert judge(2, leader.store.arrivals(2, 2), final=True).code == 21
        twice = [replace(stale, round=2, hostname=name) for name in ("a", "b")]
        for node in twice:
            leader.store.check_in(node)
        verdict = judge(2, leader.store.arrivals(2, 2), final=False)
        assert verdict.code == 2 and "rank 1 checked in 2 times" in verdict.message
    finally:
        leader.store.close()


def test_a_stopped_vllm_is_hung_and_counts_as_this_nodes_own_failure(pair):
    leader, worker = pair
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        leader.hooks.started(lambda: True, PGID)
        worker.hooks.started(lambda: True, sleeper.pid)  # its own process group, as vLLM's
        os.kill(sleeper.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=5)
        assert time.monotonic() - stopped <= worker.settings.peer_timeout_s + 1
        assert "vLLM on rank 1 is hung" in worker.hooks.stop_request().reason
        assert wait_for(lambda: leader.hooks.stop_request() is not None, timeout=3)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_a_replaced_leader_is_found_by_the_worker_and_the_group_meets_in_its_round_1():
    port = free_port_pair()
    worker = make(1, port, peer_timeout_s=3, secret=None, rendezvous_timeout_s=30)
    worker.settings = replace(worker.settings, max_restarts=1)
    with helper_process(LEADER, str(port), ready="open") as first:
        worker.meet(FACTS)
        assert first.stdout.readline().strip() == "running"
        worker.hooks.started(lambda: True, PGID)
        os.kill(first.pid, signal.SIGKILL)  # the leader's pod is gone ...
        assert wait_for(lambda: worker.hooks.stop_request() is not None, timeout=10)
    stop = worker.end_round(vllm_exit="exit 0", signalled=False)
    assert stop.rank == 0 and stop.restart and worker.meets_again
    with helper_process(LEADER, str(port), ready="open") as second:  # ... and recreated
        worker.meet_again()
        assert second.stdout.readline().strip() == "running"
        assert worker.round == 1 and worker.state is GroupState.MEETING
        worker.hooks.started(lambda: True, PGID)
        time.sleep(1)
        assert worker.hooks.stop_request() is None and worker.health().healthy


def test_a_twin_of_a_live_member_that_joins_the_running_group_ends_it_as_a_duplicate(pair):
    leader, worker = pair
    leader.hooks.started(lambda: True, PGID)
    worker.hooks.started(lambda: True, PGID)
    twin = make(1, leader.topology.master_port)
    with pytest.raises(GroupMismatchError) as caught:
        twin.meet(FACTS)
    assert caught.value.exit_code == 2 and "rank 1 checked in twice" in caught.value.message
    assert wait_for(lambda: leader.hooks.stop_request() is not None)
    assert leader.hooks.stop_request().exit_code == 2


def test_while_the_group_first_meets_the_leader_names_the_missing_ranks_every_so_often(monkeypatch, caplog):
    from kaito_runtime.launch.group import member

    monkeypatch.setattr(member, "PROGRESS_EVERY_S", 0.3)
    caplog.set_level(logging.INFO, logger=LOG.name)
    port = free_port_pair()
    leader, worker = make(0, port, nnodes=3, rendezvous_timeout_s=1.5), make(1, port, nnodes=3, rendezvous_timeout_s=1.5)
    leader.open()
    try:
        results = meet_all([leader, worker])
        assert isinstance(results[0], RendezvousTimeoutError) and "rank 2 never checked in" in results[0].message
        waiting = [r.getMessage() for r in caplog.records if "waiting for rank" in r.getMessage()]
        assert len(waiting) >= 2 and all("round 1: waiting for rank 2 to check in" in line for line in waiting)
    finally:
        leader.store.close()


CUT_NODE = """
import logging, os, sys, time
from kaito_runtime.launch.group import Group, GroupSettings, NodeFacts, plan_fields
from kaito_runtime.types import Topology
logging.basicConfig(level=logging.WARNING)
rank, leader_ip, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
topo = Topology(nnodes=2, node_rank=rank, leader_address=leader_ip, master_port=port)
group = Group(GroupSettings(topo, rendezvous_timeout_s=30, peer_timeout_s=3, beat_interval_s=0.2), env={},
              log=logging.getLogger("node"))
if rank == 0:
    group.open()
print("open", flush=True)
group.meet(NodeFacts({"cpu_cores": 1}, "0.1", "0.32.0", plan_fields("tiny", "abc", ["--max-model-len", "256"])))
group.hooks.started(lambda: True, os.getpgid(0))
print("running", flush=True)
while group.hooks.stop_request() is None:
    time.sleep(0.05)
print("lost " + group.hooks.stop_request().reason, flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_network_cut_between_two_namespaces_is_noticed_by_both_launchers_within_the_peer_timeout():
    """issue 18 item 3 without vLLM (the real-vLLM form is tests/e2e/test_multi_node.py): two
    launchers' group owners in two network namespaces joined by a veth pair; the link goes down."""
    from tests.support.group_helpers import namespaces_or_skip

    net = namespaces_or_skip()
    try:
        port = 29611
        with helper_process(CUT_NODE, "0", net.ips[0], str(port), ready="open", prefix=tuple(net.prefix(0))) as leader, \
                helper_process(CUT_NODE, "1", net.ips[0], str(port), ready="open", prefix=tuple(net.prefix(1))) as worker:
            assert leader.stdout.readline().strip() == "running"
            assert worker.stdout.readline().strip() == "running"
            time.sleep(1)
            cut = time.monotonic()
            net.cut()
            seen = {}
            for name, proc in (("leader", leader), ("worker", worker)):
                line = proc.stdout.readline().strip()
                seen[name] = (time.monotonic() - cut, line)
            assert seen["leader"][1].startswith("lost rank 1's launcher sent no heartbeat"), seen
            assert seen["worker"][1].startswith("lost the leader (rank 0) is gone"), seen
            print(f"after the cut: " + ", ".join(f"{name} {took:.1f} s" for name, (took, _) in seen.items()))
            assert max(took for took, _ in seen.values()) <= 3 + 1.5, seen
    finally:
        net.remove()


def test_a_draining_worker_stays_healthy_for_its_probe(pair):
    leader, worker = pair
    Vllm(leader), Vllm(worker)
    worker.hooks.signalled(signal.SIGTERM)
    assert worker.health().answer() == (True, "draining: vLLM serves the leader's drain (group draining, round 1, restarts 0)")


def test_every_node_is_told_once_per_round_from_the_supervising_thread_that_the_leader_serves(pair):
    leader, worker = pair
    told: list[int] = []
    for group in (leader, worker):
        group.when_serving(lambda rank=group.rank: told.append(rank))
        group.hooks.started(lambda: True, PGID)
    for _ in range(5):  # beats flow, but the leader's vLLM does not answer yet
        time.sleep(0.1)
        leader.hooks.tick()
        worker.hooks.tick()
    assert told == []
    leader.serving()
    leader.hooks.tick()
    assert told == [0]

    def worker_told() -> bool:
        worker.hooks.tick()
        return told == [0, 1]

    assert wait_for(worker_told)  # through the leader's heartbeat
    for group in (leader, worker):
        group.hooks.tick()
    assert told == [0, 1]


def test_a_lost_member_leaves_nothing_to_drain_on_any_node(pair):
    leader, worker = pair
    for group in (leader, worker):
        group.hooks.started(lambda: True, PGID)
    assert not leader.hooks.nothing_to_drain() and not worker.hooks.nothing_to_drain()
    worker.hooks.exited(-9)
    assert worker.hooks.nothing_to_drain()  # its own vLLM is gone: the loss stands
    assert wait_for(lambda: leader.hooks.stop_request() is not None)
    assert leader.hooks.nothing_to_drain()  # the leader's engine waits on a peer that is gone

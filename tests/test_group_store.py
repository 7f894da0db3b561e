"""The group's rendezvous through a real torch.distributed TCPStore on loopback (in-process)."""

import socket
import threading

import pytest

from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, RendezvousTimeoutError
from kaito_runtime.launch.group_store import (
    CheckIn, GroupStore, StopNotice, Verdict, fingerprint, judge, meet, plan_fields,
)

ARGV = ["vllm", "serve", "/m", "--tensor-parallel-size", "2", "--max-model-len", "256", "--enforce-eager",
        "--nnodes", "2", "--node-rank", "0", "--master-addr", "10.0.0.1", "--port", "5000"]


def node(rank, argv=ARGV, **kw):
    fields = plan_fields("tiny", "abc", [t if t != "0" or i == 0 else str(rank) for i, t in enumerate(argv)])
    base = dict(rank=rank, host_ip="127.0.0.1", hostname=f"n{rank}", resources={"cpu_cores": 1, "ram_bytes": 1},
                kaito_runtime_version="0.1", vllm_version="0.32.0", plan_fields=fields, weights_complete=True)
    base.update(kw)
    return CheckIn(**base)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_plan_fields_leave_out_the_per_node_flags_and_keep_the_rest():
    fields = plan_fields("tiny", None, ARGV + ["--headless"])
    assert fields["--max-model-len"] == "256" and fields["--enforce-eager"] == "" and fields["revision"] == "-"
    assert not {"--node-rank", "--headless", "--master-addr", "--port"} & set(fields)
    worker = plan_fields("tiny", None, [*ARGV[:11], "1", "--master-addr", "10.0.0.1", "--headless"])
    assert fingerprint(worker) == fingerprint(plan_fields("tiny", None, ARGV))


def test_judge_names_rank_and_field_of_a_mismatch():
    other = node(1, [t if t != "256" else "512" for t in ARGV])
    verdict = judge(2, {0: [node(0)], 1: [other]}, final=False)
    assert not verdict.ok and verdict.code == 2
    assert "rank 1" in verdict.message and "--max-model-len" in verdict.message and "512" in verdict.message


def test_judge_names_versions_duplicates_and_missing_ranks():
    assert "vLLM version" in judge(2, {0: [node(0)], 1: [node(1, vllm_version="0.33")]}, final=False).message
    dup = judge(3, {0: [node(0)], 1: [node(1), node(1, hostname="other")]}, final=False)
    assert dup.code == 2 and "rank 1 checked in 2 times" in dup.message and "other" in dup.message
    assert judge(3, {0: [node(0)]}, final=False) is None
    missing = judge(3, {0: [node(0)]}, final=True)
    assert missing.code == 21 and "ranks 1, 2 never checked in" in missing.message
    assert judge(2, {0: [node(0)], 1: [node(1, weights_complete=False)]}, final=False).code == 2
    assert judge(2, {0: [node(0)], 1: [node(1)]}, final=False).ok


def _meet_all(port, nodes, nnodes=2, timeout_s=5.0, early=()):
    results = {}
    leader = GroupStore.host(port)
    for n in early:  # checked in before anyone else (a twin that was quicker)
        GroupStore.join("127.0.0.1", port, timeout_s=5).check_in(n)

    def run(n):
        store = leader if n.rank == 0 and n.hostname == "n0" else GroupStore.join("127.0.0.1", port, timeout_s=5)
        try:
            results[(n.rank, n.hostname)] = meet(store, n, nnodes, timeout_s=timeout_s, poll_s=0.05)
        except Exception as exc:
            results[(n.rank, n.hostname)] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return leader, results


def test_a_group_that_agrees_is_released_on_every_node_and_can_beat_and_stop():
    leader, results = _meet_all(free_port(), [node(0), node(1)])
    assert all(isinstance(v, Verdict) and v.ok for v in results.values()), results
    assert leader.leader_plan()["fingerprint"] == node(0).fingerprint
    assert leader.beat(1) == 1 and leader.beat(1) == 2 and leader.heartbeat(1) == 2
    first = leader.announce_stop(StopNotice(1, "lost", "vLLM on rank 1 exited"))
    assert leader.announce_stop(StopNotice(0, "requested", "SIGTERM")) == first == leader.stop_notice()


def test_a_mismatch_stops_every_node_with_exit_2_naming_the_field():
    other = node(1, [t if t != "256" else "512" for t in ARGV])
    _, results = _meet_all(free_port(), [node(0), other])
    for error in results.values():
        assert isinstance(error, GroupMismatchError) and error.exit_code == 2
        assert "rank 1" in error.message and "--max-model-len" in error.message


def test_a_rank_that_never_comes_fails_the_present_ones_after_the_timeout_naming_it():
    _, results = _meet_all(free_port(), [node(0)], nnodes=3, timeout_s=0.5)
    error = results[(0, "n0")]
    assert isinstance(error, RendezvousTimeoutError) and error.exit_code == 21
    assert "ranks 1, 2 never checked in" in error.message


def test_a_duplicate_rank_is_named_by_the_leader():
    leader, results = _meet_all(free_port(), [node(0)], early=[node(1), node(1, hostname="twin")])
    error = results[(0, "n0")]
    assert isinstance(error, GroupMismatchError) and error.exit_code == 2
    assert "rank 1 checked in 2 times" in error.message and "twin" in error.message
    assert leader.verdict().code == 2  # the workers waiting for the verdict read the same refusal


def test_a_duplicate_that_arrives_after_the_release_fails_and_stops_the_group():
    leader, results = _meet_all(free_port(), [node(0), node(1)])
    assert all(v.ok for v in results.values())
    late = GroupStore.join("127.0.0.1", leader._store.port, timeout_s=5)
    with pytest.raises(GroupMismatchError, match="rank 1 checked in twice"):
        meet(late, node(1, hostname="late"), 2, timeout_s=5, poll_s=0.05)
    assert leader.stop_notice() == StopNotice(1, "duplicate", "rank 1 checked in twice")


def test_a_worker_whose_leader_store_is_gone_is_told_so():
    port = free_port()
    leader = GroupStore.host(port)
    worker = GroupStore.join("127.0.0.1", port, timeout_s=5)
    del leader
    with pytest.raises(GroupMemberLostError) as caught:
        meet(worker, node(1), 2, timeout_s=5, poll_s=0.05)
    assert caught.value.exit_code == 22 and "rank 1" in caught.value.message

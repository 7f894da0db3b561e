"""The group while vLLM runs, on a real TCPStore on loopback: heartbeats, a silent peer, the stop
notice, the leader's store going away, and a worker's /health."""

from __future__ import annotations

import logging
import socket
import time
import urllib.error
import urllib.request

import pytest

from kaito_runtime.launch.group import GroupMember, GroupState, GroupStop, open_store
from kaito_runtime.launch.group_store import GroupStore, plan_fields
from kaito_runtime.launch.worker_health import WorkerHealthServer
from kaito_runtime.types import Topology

LOG = logging.getLogger("test-group")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def topology(rank: int, port: int, nnodes: int = 2) -> Topology:
    return Topology(nnodes=nnodes, node_rank=rank, leader_address="127.0.0.1", master_port=port - 1)


@pytest.fixture
def pair():
    port = free_port()
    leader_store = GroupStore.host(port)
    worker_store = GroupStore.join("127.0.0.1", port, timeout_s=5)
    leader = GroupMember(leader_store, topology(0, port), peer_timeout_s=1.5, log=LOG, beat_interval_s=0.1)
    worker = GroupMember(worker_store, topology(1, port), peer_timeout_s=1.5, log=LOG, beat_interval_s=0.1)
    yield leader, worker
    for member in (worker, leader):
        member._done.set()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_beating_peers_keep_the_group_running_and_the_worker_healthy(pair):
    leader, worker = pair
    leader.start(lambda: True)
    worker.start(lambda: True)
    time.sleep(2.5)  # longer than the peer timeout: only the heartbeats keep it alive
    assert leader.stop_request() is None and worker.stop_request() is None
    assert worker.health() == (True, "ok")
    assert leader.state is GroupState.RUNNING


def test_a_worker_whose_vllm_is_gone_goes_silent_and_the_leader_calls_it_lost(pair):
    leader, worker = pair
    alive = {"worker": True}
    leader.start(lambda: True)
    worker.start(lambda: alive["worker"])
    time.sleep(0.5)
    alive["worker"] = False  # no more beats (as if its launcher froze with vLLM gone)
    assert not worker.health()[0]
    assert wait_for(lambda: leader.stop_request() is not None, timeout=5)
    request = leader.stop_request()
    assert request.exit_code == 22 and "rank 1" in request.reason and "no heartbeat" in request.reason
    # The leader's notice reaches the worker, which stops too.
    assert wait_for(lambda: worker.stop_request() is not None)
    assert worker.stop_request().exit_code == 22


def test_a_stop_asked_of_the_leader_reaches_the_worker_as_a_graceful_stop(pair):
    import signal

    leader, worker = pair
    leader.start(lambda: True)
    worker.start(lambda: True)
    leader.asked_to_stop(signal.SIGTERM)
    assert wait_for(lambda: worker.stop_request() is not None)
    request = worker.stop_request()
    assert request.exit_code == 0 and request.reason == "rank 0 was asked to stop (SIGTERM)"
    assert leader.stop_request() is None  # its own stop is the signal's, not the group's
    started = time.monotonic()
    assert leader.finish(vllm_exit="exit 0", signalled=True).kind == "requested"
    assert time.monotonic() - started < 2  # the worker had confirmed: no waiting out the linger
    assert leader.state is GroupState.ENDED


def test_a_worker_whose_vllm_exited_tells_the_leader_at_once(pair):
    leader, worker = pair
    leader.start(lambda: True)
    worker.start(lambda: True)
    stop = worker.finish(vllm_exit="killed by SIGKILL", signalled=False)
    assert stop == GroupStop(1, "lost", "vLLM on rank 1 exited (killed by SIGKILL)")
    assert wait_for(lambda: leader.stop_request() is not None, timeout=2)  # well before the peer timeout
    assert leader.stop_request().reason == "vLLM on rank 1 exited (killed by SIGKILL)"


def test_the_worker_counts_the_leader_lost_when_its_store_goes_away():
    port = free_port()
    leader_store = GroupStore.host(port)
    worker = GroupMember(GroupStore.join("127.0.0.1", port, timeout_s=5), topology(1, port),
                         peer_timeout_s=30, log=LOG, beat_interval_s=0.1)
    worker.start(lambda: True)
    time.sleep(0.3)
    del leader_store._store  # the leader's launcher is gone: its TCPStore server closes
    leader_store = None
    assert wait_for(lambda: worker.stop_request() is not None, timeout=10)
    request = worker.stop_request()
    assert request.exit_code == 22 and "the leader (rank 0) is gone" in request.reason
    assert not worker.health()[0]


def test_a_worker_waits_for_the_leaders_store_and_gives_up_naming_it(caplog):
    from kaito_runtime.errors import RendezvousTimeoutError

    port = free_port()
    started = time.monotonic()
    with pytest.raises(RendezvousTimeoutError) as caught:
        open_store(topology(1, port), "127.0.0.1", timeout_s=2, log=LOG)
    assert time.monotonic() - started < 10
    assert f"127.0.0.1:{port}" in caught.value.message and "--rendezvous-timeout" in caught.value.message


def test_the_api_key_never_travels_to_the_store():
    fields = plan_fields("m", "abc", ["vllm", "serve", "/m", "--api-key", "s3cret-key", "--port", "1"])
    assert "s3cret-key" not in str(fields) and "--api-key" not in fields


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


def test_joining_looks_the_leaders_name_up_again_on_every_try():
    """A leader pod recreated with a new IP (or whose DNS record appears late) is still found."""
    from kaito_runtime.errors import RendezvousTimeoutError
    from kaito_runtime.launch.group import join_store

    port = free_port()
    calls: list[str] = []

    def dns(name: str) -> list[str]:
        calls.append(name)
        if len(calls) == 1:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return ["127.0.0.1"]

    leader_store = GroupStore.host(port)
    store = join_store("myws-0.myws-headless", port, timeout_s=10, log=LOG, resolver=dns)
    assert calls == ["myws-0.myws-headless"] * 2 and store.verdict() is None
    del leader_store
    with pytest.raises(RendezvousTimeoutError) as caught:
        join_store("myws-0.myws-headless", free_port(), timeout_s=1.5, log=LOG, resolver=lambda n: [])
    assert "myws-0.myws-headless" in caught.value.message and "DNS: no address" in caught.value.message

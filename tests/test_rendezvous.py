"""Multi-node check-in: leader resolution with retries, this node's IP, waiting for the leader's port.

Only loopback addresses (127.0.0.1, localhost) are used; DNS failures come from a fake resolver.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from kaito_runtime.launch import rendezvous
from kaito_runtime.errors import TopologyError
from kaito_runtime.launch.rendezvous import (
    RendezvousInfo,
    local_ip_towards,
    prepare_rendezvous,
    resolve_leader,
    with_master_ip,
)
from kaito_runtime.types import AttentionGeometry, LaunchPlan, ModelSpec, Topology

log = logging.getLogger("test_rendezvous")


class FlakyDns:
    """Fails ``misses`` times with a gaierror, then answers ``ips``."""

    def __init__(self, misses: int, ips: tuple[str, ...] = ("127.0.0.1",)) -> None:
        self.misses = misses
        self.ips = ips
        self.calls: list[str] = []

    def __call__(self, host: str) -> list[str]:
        self.calls.append(host)
        if len(self.calls) <= self.misses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.ips)


def never_called(host: str) -> list[str]:
    raise AssertionError(f"DNS was asked for {host}")


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group(rank: int, leader: str = "localhost", port: int = 29501) -> Topology:
    return Topology(nnodes=2, node_rank=rank, leader_address=leader, master_port=port)


# ------------------------------------------------------------------------------------------------
# resolve_leader
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_an_ip_passes_through_without_dns(ip: str) -> None:
    assert resolve_leader(ip, timeout_s=0, log=log, resolver=never_called) == ip


def test_localhost_resolves_to_ipv4_loopback() -> None:
    assert resolve_leader("localhost", timeout_s=5, log=log) == "127.0.0.1"


def test_a_late_dns_record_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    dns = FlakyDns(misses=2)
    with caplog.at_level(logging.INFO, logger=log.name):
        assert resolve_leader("myws-0.myws-headless", timeout_s=5, interval_s=0.01, log=log, resolver=dns) == "127.0.0.1"
    assert len(dns.calls) == 3
    assert "waiting for leader myws-0.myws-headless to resolve" in caplog.text
    assert "resolved to 127.0.0.1 after" in caplog.text


def test_dns_timeout_names_address_seconds_and_fix() -> None:
    dns = FlakyDns(misses=10**6)
    started = time.monotonic()
    with pytest.raises(TopologyError) as info:
        resolve_leader("myws-0.myws-headless", timeout_s=0.2, interval_s=0.05, log=log, resolver=dns)
    assert time.monotonic() - started < 2
    text = str(info.value)
    assert "'myws-0.myws-headless' did not resolve" in text and "within 0 s" in text
    assert "Name or service not known" in text
    assert "publishNotReadyAddresses" in text and "--leader-address" in text
    assert info.value.exit_code == 2
    assert len(dns.calls) >= 2


def test_placeholder_address_is_refused_at_once() -> None:
    with pytest.raises(TopologyError, match="not a host name"):
        resolve_leader("<leader>", timeout_s=60, log=log, resolver=never_called)


# ------------------------------------------------------------------------------------------------
# local_ip_towards
# ------------------------------------------------------------------------------------------------


def test_local_ip_towards_loopback() -> None:
    assert local_ip_towards("127.0.0.1") == "127.0.0.1"


def test_no_route_is_an_explained_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoRoute:
        def __init__(self, *args: object) -> None:
            pass

        def __enter__(self) -> NoRoute:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def connect(self, addr: object) -> None:
            raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(rendezvous.socket, "socket", NoRoute)
    with pytest.raises(TopologyError) as info:
        local_ip_towards("127.0.0.1")
    assert "Network is unreachable" in str(info.value) and "VLLM_HOST_IP" in str(info.value)


# ------------------------------------------------------------------------------------------------
# prepare_rendezvous
# ------------------------------------------------------------------------------------------------


def test_single_node_needs_no_rendezvous() -> None:
    assert prepare_rendezvous(Topology(), env={}, timeout_s=0, log=log, resolver=never_called) is None


def test_leader_resolves_itself_and_does_not_wait_for_a_port(closed_port: int) -> None:
    info = prepare_rendezvous(group(0, port=closed_port), env={}, timeout_s=5, log=log)
    assert info is not None
    assert (info.master_addr_ip, info.host_ip) == ("127.0.0.1", "127.0.0.1")
    assert info.host_ip_source == "route to 127.0.0.1"
    assert info.socket_ifname == rendezvous.interface_of("127.0.0.1")


def test_a_worker_resolves_the_leader_without_waiting_for_a_port(closed_port: int) -> None:
    """The leader's launcher opens the group store; vLLM's master port opens only after the
    release, so the rendezvous must not wait for it (launch/group.py waits for the store)."""
    started = time.monotonic()
    info = prepare_rendezvous(group(1, port=closed_port), env={}, timeout_s=5, log=log)
    assert info is not None and info.master_addr_ip == "127.0.0.1" and info.host_ip == "127.0.0.1"
    assert time.monotonic() - started < 1


def test_exported_host_ip_is_honoured_and_leader_skips_dns() -> None:
    env = {"VLLM_HOST_IP": "127.0.0.1"}
    info = prepare_rendezvous(group(0, "myws-0.myws-headless"), env=env, timeout_s=0, log=log, resolver=never_called)
    assert info is not None
    assert (info.master_addr_ip, info.host_ip, info.host_ip_source) == ("127.0.0.1", "127.0.0.1", "VLLM_HOST_IP")
    assert "VLLM_HOST_IP" not in info.child_env(env)


def test_worker_keeps_the_exported_host_ip(listener: int) -> None:
    info = prepare_rendezvous(group(1, port=listener), env={"VLLM_HOST_IP": "127.0.0.1"}, timeout_s=5, log=log)
    assert info is not None and info.host_ip_source == "VLLM_HOST_IP"


def test_a_planning_topology_cannot_launch() -> None:
    from dataclasses import replace

    planned = replace(group(0, "<leader>"), assumed=("node_rank", "leader_address"))
    with pytest.raises(TopologyError, match="assumed \\(node_rank, leader_address\\)"):
        prepare_rendezvous(planned, env={}, timeout_s=60, log=log, resolver=never_called)


def test_exported_host_ip_must_be_an_ip() -> None:
    with pytest.raises(TopologyError, match="VLLM_HOST_IP='node-a' is not an IP address"):
        prepare_rendezvous(group(1), env={"VLLM_HOST_IP": "node-a"}, timeout_s=0, log=log, resolver=never_called)


def test_child_env_sets_host_ip_and_interfaces_unless_exported() -> None:
    info = RendezvousInfo("127.0.0.1", "127.0.0.1", "route to 127.0.0.1", "lo")
    assert info.child_env({}) == {"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}
    assert info.child_env({"NCCL_SOCKET_IFNAME": "ib0"}) == {"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    assert RendezvousInfo("127.0.0.1", "127.0.0.1", "x").child_env({}) == {"VLLM_HOST_IP": "127.0.0.1"}


def test_resolved_ip_reaches_the_vllm_command() -> None:
    from kaito_runtime.launch.vllm_command import CommandInputs, build_vllm_command

    model = ModelSpec(
        name="tiny",
        architecture="LlamaForCausalLM",
        weights_bytes=1_641_920,
        max_context=512,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=4, num_kv_heads=2, head_dim=32),
    )
    plan = LaunchPlan(model=model, target="gpu", topology=group(1), pipeline_parallel_size=2, max_model_len=512, gpus_per_node=1)
    info = RendezvousInfo("127.0.0.1", "127.0.0.1", "route to 127.0.0.1")
    resolved = with_master_ip(plan, info)
    assert resolved.topology.leader_address == "127.0.0.1" and plan.topology.leader_address == "localhost"
    assert with_master_ip(plan, None) is plan
    launch = build_vllm_command(resolved, CommandInputs(model_path="/m", base_env={}))
    argv = list(launch.argv)
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"
    assert info.child_env({})["VLLM_HOST_IP"] == "127.0.0.1"

"""The group's addresses (launch/group/addresses.py): the one loop that finds the leader (DNS
again on every try, then an optional connect), this node's IP, the input checks before a launch.

Only loopback addresses (127.0.0.1, localhost) are used; DNS failures come from a fake resolver.
"""

from __future__ import annotations

import logging
import socket
import time

import pytest

from kaito_runtime.errors import LeaderNotResolvedError, NoRouteError, RendezvousError, RendezvousTimeoutError, TopologyError
from kaito_runtime.launch.group import addresses as group_addresses
from kaito_runtime.launch.group.addresses import (
    RendezvousInfo,
    Unreachable,
    addresses,
    check_launchable,
    interface_of,
    local_ip_towards,
    reach_leader,
    with_master_ip,
)
from kaito_runtime.types import LaunchPlan, Topology

log = logging.getLogger("test_group_addresses")


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


def group(rank: int, leader: str = "localhost", port: int = 29501) -> Topology:
    return Topology(nnodes=2, node_rank=rank, leader_address=leader, master_port=port)


# ------------------------------------------------------------------------------------------------
# reach_leader: the one DNS loop
# ------------------------------------------------------------------------------------------------


def resolve(address: str, **kw) -> str:
    return reach_leader(address, log=log, **kw)[0]


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1"])
def test_an_ip_passes_through_without_dns(ip: str) -> None:
    assert resolve(ip, timeout_s=0, resolver=never_called) == ip


def test_localhost_resolves_to_ipv4_loopback() -> None:
    assert resolve("localhost", timeout_s=5) == "127.0.0.1"


def test_a_late_dns_record_is_waited_for(caplog: pytest.LogCaptureFixture) -> None:
    dns = FlakyDns(misses=2)
    with caplog.at_level(logging.INFO, logger=log.name):
        assert resolve("myws-0.myws-headless", timeout_s=5, interval_s=0.01, resolver=dns) == "127.0.0.1"
    assert len(dns.calls) == 3
    assert "waiting for leader myws-0.myws-headless to resolve" in caplog.text
    assert "resolved to 127.0.0.1 after" in caplog.text


def test_a_name_that_never_resolves_is_a_rendezvous_error_exit_21() -> None:
    dns = FlakyDns(misses=10**6)
    started = time.monotonic()
    with pytest.raises(LeaderNotResolvedError) as info:
        resolve("myws-0.myws-headless", timeout_s=0.2, interval_s=0.05, resolver=dns)
    assert time.monotonic() - started < 2
    text = str(info.value)
    assert "'myws-0.myws-headless' did not resolve" in text and "within 0 s" in text
    assert "Name or service not known" in text
    assert "publishNotReadyAddresses" in text and "--leader-address" in text
    assert info.value.exit_code == 21 and isinstance(info.value, RendezvousError)
    assert not isinstance(info.value, TopologyError)
    assert len(dns.calls) >= 2


def test_the_loop_looks_the_name_up_again_on_every_connect_try() -> None:
    """A leader pod recreated with a new IP (or whose DNS record appears late) is still found:
    each try resolves again and connects to what it got."""
    dns = FlakyDns(misses=1, ips=("127.0.0.2",))
    tried: list[str] = []

    def connect(ip: str, seconds: float) -> str:
        tried.append(ip)
        if len(tried) < 3:
            raise Unreachable("connection refused")
        return "store"

    assert reach_leader("myws-0.myws-headless", timeout_s=10, interval_s=0.01, log=log, resolver=dns,
                        connect=connect) == ("127.0.0.2", "store")
    assert len(dns.calls) == 4 and tried == ["127.0.0.2"] * 3


def test_a_leader_that_resolves_but_never_answers_names_what_was_waited_for() -> None:
    def connect(ip: str, seconds: float) -> str:
        raise Unreachable("connection refused")

    with pytest.raises(RendezvousTimeoutError) as info:
        reach_leader("localhost", timeout_s=0.3, interval_s=0.05, log=log, connect=connect,
                     target="the leader's group store (port 29502)")
    assert info.value.exit_code == 21
    assert "the leader's group store (port 29502) at localhost (127.0.0.1)" in info.value.message
    assert "connection refused" in info.value.message and "--rendezvous-timeout" in info.value.message


def test_placeholder_address_is_refused_at_once() -> None:
    with pytest.raises(TopologyError, match="not a host name"):
        resolve("<leader>", timeout_s=60, resolver=never_called)


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

    monkeypatch.setattr(group_addresses.socket, "socket", NoRoute)
    with pytest.raises(NoRouteError) as info:
        local_ip_towards("127.0.0.1")
    assert "Network is unreachable" in str(info.value) and "VLLM_HOST_IP" in str(info.value)
    assert info.value.exit_code == 21


# ------------------------------------------------------------------------------------------------
# check_launchable and addresses
# ------------------------------------------------------------------------------------------------


def test_this_nodes_address_is_the_route_to_the_leader() -> None:
    info = addresses(group(1), "127.0.0.1", "", log)
    assert (info.master_addr_ip, info.host_ip, info.host_ip_source) == ("127.0.0.1", "127.0.0.1", "route to 127.0.0.1")
    assert info.socket_ifname == interface_of("127.0.0.1")


def test_an_exported_host_ip_is_honoured() -> None:
    assert check_launchable(group(0), {"VLLM_HOST_IP": "127.0.0.1"}) == "127.0.0.1"
    info = addresses(group(1), "127.0.0.1", "127.0.0.1", log)
    assert info.host_ip_source == "VLLM_HOST_IP"
    assert "VLLM_HOST_IP" not in info.child_env({"VLLM_HOST_IP": "127.0.0.1"})


def test_a_planning_topology_cannot_launch() -> None:
    from dataclasses import replace

    planned = replace(group(0, "<leader>"), assumed=("node_rank", "leader_address"))
    with pytest.raises(TopologyError, match="assumed \\(node_rank, leader_address\\)"):
        check_launchable(planned, {})


def test_exported_host_ip_must_be_an_ip() -> None:
    with pytest.raises(TopologyError, match="VLLM_HOST_IP='node-a' is not an IP address"):
        check_launchable(group(1), {"VLLM_HOST_IP": "node-a"})


def test_child_env_sets_host_ip_and_interfaces_unless_exported() -> None:
    info = RendezvousInfo("127.0.0.1", "127.0.0.1", "route to 127.0.0.1", "lo")
    assert info.child_env({}) == {"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo", "NCCL_SOCKET_IFNAME": "=lo"}
    assert info.child_env({"NCCL_SOCKET_IFNAME": "ib0"}) == {"VLLM_HOST_IP": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
    assert RendezvousInfo("127.0.0.1", "127.0.0.1", "x").child_env({}) == {"VLLM_HOST_IP": "127.0.0.1"}


def test_resolved_ip_reaches_the_vllm_command() -> None:
    from kaito_runtime.launch.vllm_command import CommandInputs, build_vllm_command

    from tests.support.planner_helpers import tiny_model

    plan = LaunchPlan(model=tiny_model(), target="gpu", topology=group(1), pipeline_parallel_size=2, max_model_len=512, gpus_per_node=1)
    info = RendezvousInfo("127.0.0.1", "127.0.0.1", "route to 127.0.0.1")
    resolved = with_master_ip(plan, info)
    assert resolved.topology.leader_address == "127.0.0.1" and plan.topology.leader_address == "localhost"
    assert with_master_ip(plan, None) is plan
    launch = build_vllm_command(resolved, CommandInputs(model_path="/m", base_env={}))
    argv = list(launch.argv)
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"
    assert info.child_env({})["VLLM_HOST_IP"] == "127.0.0.1"

"""The multi-node address work before the group meets: the leader's IP and this node's IP.

vLLM's multi-node mode without Ray (vllm.md "Multi-node without Ray") joins its torch.distributed
group at ``--master-addr:--master-port``. Left alone it has three weak spots in a cluster:

* the leader's address is a DNS name (LWS ``LWS_LEADER_ADDRESS``, KAITO ``<ws>-0.<ws>-headless``)
  whose record may appear only once the leader's pod exists, so we resolve it to an IP first,
  retrying until a deadline;
* vLLM guesses this node's own address with a UDP "connect" to 8.8.8.8 and falls back to 0.0.0.0
  on air-gapped nodes; we take the address of the route towards the leader instead (or the
  ``VLLM_HOST_IP`` the user exported) and name the network interface it belongs to, so gloo and
  NCCL use the same one on multi-NIC hosts;
* a worker that starts long before the leader (the leader still downloading weights) would hit
  torch.distributed's own connect timeout (600 s for NCCL) and restart the group; workers wait
  for the leader's group store instead, and no vLLM starts before the group is released
  (launch/group/member.py; peers.md lesson 7: "wait for the leader instead of racing it").

Every wait has a deadline and says what it is waiting for; nothing here imports torch or vLLM.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from kaito_runtime.errors import LeaderNotResolvedError, NoRouteError, RendezvousTimeoutError, TopologyError
from kaito_runtime.types import LaunchPlan, Topology

# Long enough for a leader that still downloads a large model; short enough that a group whose
# leader never comes up fails with a message instead of hanging a rollout.
DEFAULT_TIMEOUT_S = 1800.0
PROGRESS_EVERY_S = 15.0
CONNECT_TRY_S = 5.0  # one connect attempt; the loop says what it waits for between tries
# How a user raises the deadline; named in the timeout errors.
TIMEOUT_HINT = "raise the rendezvous timeout (--rendezvous-timeout / KAITO_RENDEZVOUS_TIMEOUT)"

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?$")

Resolver = Callable[[str], Sequence[str]]
T = TypeVar("T")


@dataclass(frozen=True)
class RendezvousInfo:
    """What every node agreed on before vLLM starts."""

    master_addr_ip: str  # the leader's IP: vLLM's --master-addr
    host_ip: str  # this node's IP: VLLM_HOST_IP
    host_ip_source: str  # "VLLM_HOST_IP" (exported) or "route to <leader ip>"
    socket_ifname: str | None = None  # the interface holding host_ip, when it could be found

    def child_env(self, base_env: Mapping[str, str]) -> dict[str, str]:
        """Variables to add to vLLM's environment; a value the user exported wins."""
        wanted = {"VLLM_HOST_IP": self.host_ip}
        if self.socket_ifname:
            wanted["GLOO_SOCKET_IFNAME"] = self.socket_ifname
            # NCCL reads the value as a prefix ("eth1" also picks "eth10"); "=" asks for this name only.
            wanted["NCCL_SOCKET_IFNAME"] = "=" + self.socket_ifname
        return {k: v for k, v in wanted.items() if not base_env.get(k)}


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def dns_lookup(host: str) -> list[str]:
    """Every address ``host`` resolves to, IPv4 first (torch.distributed and NCCL prefer it)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    found: list[str] = []
    for family, _, _, _, sockaddr in sorted(infos, key=lambda info: info[0] != socket.AF_INET):
        ip = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and ip not in found:
            found.append(ip)
    return found


def _check_host(address: str) -> None:
    if not _HOSTNAME_RE.match(address):
        raise TopologyError(
            f"The leader address {address!r} is not a host name or IP address",
            why="A launch needs a real leader address to join the group (a placeholder is fine for "
            "--dry-run only)",
            fix="set --leader-address/KAITO_LEADER_ADDRESS to the leader's host name or IP",
        )


class _Progress:
    """Logs a waiting line at the first miss and then every PROGRESS_EVERY_S."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter, started: float) -> None:
        self.log = log
        self.started = started
        self.last: float | None = None

    def miss(self, now: float, message: str, *args: object) -> None:
        if self.last is None or now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self.log.info(message + " (%.0f s)", *args, now - self.started)


class Unreachable(Exception):
    """One try to reach the leader found nothing there yet (raised by a ``connect`` function)."""


def reach_leader(
    address: str,
    *,
    timeout_s: float,
    log: logging.Logger | logging.LoggerAdapter,
    resolver: Resolver = dns_lookup,
    connect: Callable[[str, float], T] | None = None,
    target: str = "",
    interval_s: float = 1.0,
) -> tuple[str, T | None]:
    """The one loop that finds the leader: look its name up (again on every try, so a recreated
    leader pod with a new IP is still found) and, given ``connect``, reach it at that IP; retried
    until ``timeout_s`` with a progress line at the first miss and every 15 s.

    Returns the leader's IP and what ``connect`` returned (None without one). Raises
    LeaderNotResolvedError (21) when the name never resolved, RendezvousTimeoutError (21) when it
    resolved but ``connect`` (which raises Unreachable while nobody answers) never succeeded, and
    TopologyError (2) for an address that cannot be a host name at all.
    """
    address = address.strip()
    if not is_ip(address):
        _check_host(address)
    started = time.monotonic()
    deadline = started + max(0.0, timeout_s)
    progress = _Progress(log, started)
    resolved: str | None = None
    problem = "no address returned"
    while True:
        ip = address
        if not is_ip(address):
            try:
                found = list(resolver(address))
                ip, problem = (found[0], problem) if found else ("", "no address returned")
            except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
                ip, problem = "", f"DNS: {exc}"
        if ip:
            if resolved is None and progress.last is not None:
                log.info("leader %s resolved to %s after %.0f s", address, ip, time.monotonic() - started)
            resolved = ip
            if connect is None:
                return ip, None
            try:
                return ip, connect(ip, max(1.0, min(CONNECT_TRY_S, deadline - time.monotonic())))
            except Unreachable as exc:
                problem = str(exc)
        now = time.monotonic()
        shown = address if ip in ("", address) else f"{address} ({ip})"
        if now >= deadline:
            if resolved is None:
                raise LeaderNotResolvedError(
                    f"The leader address {address!r} did not resolve to an IP address within {now - started:.0f} s",
                    why=f"the last DNS answer was: {problem}. A StatefulSet or LeaderWorkerSet publishes the "
                    "leader's record only once its pod exists",
                    fix="check that the leader pod (node rank 0) is scheduled and that its headless service "
                    "publishes not-ready pods (publishNotReadyAddresses: true); or pass the leader's IP with "
                    f"--leader-address/KAITO_LEADER_ADDRESS; or {TIMEOUT_HINT}",
                )
            raise RendezvousTimeoutError(
                f"{target or 'The leader'} at {shown} did not answer within {now - started:.0f} s",
                why=f"the leader's launcher opens it once it has planned its launch; the last try said: {problem}",
                fix="check the leader's log (did it start? fail?) and that the port is open between the nodes "
                f"(deploy/networkpolicy-two-nodes.yaml); or {TIMEOUT_HINT}",
            )
        if connect is None or resolved is None:
            progress.miss(now, "waiting for leader %s to resolve: %s", address, problem)
        else:
            progress.miss(now, "waiting for %s at %s: %s", target or "the leader", shown, problem)
        time.sleep(max(0.0, min(interval_s, deadline - now)))


def local_ip_towards(ip: str) -> str:
    """This node's source address on the route to ``ip``.

    A UDP socket's connect() only picks the route and the source address; no packet is sent.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((ip, 9))  # the discard port; nothing is sent
            local = str(sock.getsockname()[0])
    except OSError as exc:
        raise NoRouteError(
            f"Cannot tell this node's IP address on the way to the leader {ip}",
            why=f"The operating system found no route to it ({exc.strerror or exc})",
            fix="check the node's network, or set VLLM_HOST_IP to this node's IP on the network the "
            "leader can reach (in a pod: status.podIP through the downward API)",
        ) from None
    if ipaddress.ip_address(local).is_unspecified:
        raise NoRouteError(
            f"Cannot tell this node's IP address on the way to the leader {ip}",
            why=f"The route gives the unspecified address {local}",
            fix="set VLLM_HOST_IP to this node's IP on the network the leader can reach",
        )
    return local


def interface_of(ip: str) -> str | None:
    """The name of the network interface holding ``ip`` on this machine, if any."""
    import psutil

    wanted = ipaddress.ip_address(ip)
    for name, addrs in psutil.net_if_addrs().items():
        for addr in addrs:
            if addr.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                if ipaddress.ip_address(addr.address.split("%", 1)[0]) == wanted:
                    return name
            except ValueError:
                continue
    return None


def check_launchable(topology: Topology, env: Mapping[str, str]) -> str:
    """The input checks before a node looks for its group: its place must be known (not
    assumed) and an exported VLLM_HOST_IP must be an IP. Returns that exported IP ("" if none)."""
    if topology.assumed:
        raise TopologyError(
            f"This node's place in the group was assumed ({', '.join(topology.assumed)}), which is "
            "enough for a plan but not for a launch",
            why="Every node must know its own rank and the leader's address to join the group",
            fix="set --node-rank/KAITO_NODE_RANK and --leader-address/KAITO_LEADER_ADDRESS (or run "
            "where LWS, torchrun or the KAITO StatefulSet sets them)",
        )
    exported = (env.get("VLLM_HOST_IP") or "").strip()
    if exported and not is_ip(exported):
        raise TopologyError(
            f"VLLM_HOST_IP={exported!r} is not an IP address",
            why="vLLM and torch.distributed use it as this node's address as is",
            fix="set VLLM_HOST_IP to this node's IP, or unset it to let kaito-run find it",
        )
    return exported


def addresses(topology: Topology, leader_ip: str, exported: str, log: logging.Logger | logging.LoggerAdapter) -> RendezvousInfo:
    """This node's address on the way to the leader (``leader_ip``, found by ``reach_leader``),
    or the exported VLLM_HOST_IP, with the interface holding it. Raises NoRouteError (21)."""
    if topology.is_leader and interface_of(leader_ip) is None and not exported:
        log.warning(
            "this node is rank 0 (the leader), but the leader address %s is %s, which is not one of "
            "this node's addresses; the workers will look for the leader there",
            topology.leader_address,
            leader_ip,
        )
    if exported:
        host_ip, source = exported, "VLLM_HOST_IP"
    else:
        host_ip, source = local_ip_towards(leader_ip), f"route to {leader_ip}"
    info = RendezvousInfo(leader_ip, host_ip, source, interface_of(host_ip))
    log.info(
        "rendezvous: node %d of %d, leader %s (%s:%d), this node %s (%s%s)",
        topology.node_rank,
        topology.nnodes,
        topology.leader_address,
        info.master_addr_ip,
        topology.master_port,
        info.host_ip,
        source,
        f", interface {info.socket_ifname}" if info.socket_ifname else "",
    )
    return info


def with_master_ip(plan: LaunchPlan, info: RendezvousInfo | None) -> LaunchPlan:
    """The plan with the leader's resolved IP as its leader address (what --master-addr gets)."""
    if info is None or plan.topology.leader_address == info.master_addr_ip:
        return plan
    return replace(plan, topology=replace(plan.topology, leader_address=info.master_addr_ip))

"""Where this node stands in its group, read from options and environment conventions -> Topology.

A pure function of its inputs: no DNS, no files. Each field is looked up in this order, and the
first source that gives it wins; when two sources give *different* values the input is
contradictory and a TopologyError (exit 2) names both variables.

1. our options: keyword arguments (click maps ``--nnodes`` / ``KAITO_NNODES`` etc. onto them), else
   ``KAITO_NNODES``, ``KAITO_NODE_RANK``, ``KAITO_LEADER_ADDRESS``, ``KAITO_MASTER_PORT`` from ``env``
2. torchrun / torch elastic: ``PET_NNODES``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
   ``PET_MASTER_PORT``, then plain ``NNODES``, ``NODE_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``.
   ``WORLD_SIZE``/``RANK`` count processes, not nodes, and ``GROUP_RANK`` may be reassigned by an
   elastic rendezvous, so none of them is read. ``PET_NNODES``/``NNODES`` may be ``MIN:MAX`` only
   with MIN == MAX: a vLLM launch has a fixed size.
3. LeaderWorkerSet: ``LWS_GROUP_SIZE``, ``LWS_WORKER_INDEX``, ``LWS_LEADER_ADDRESS``.
4. KAITO StatefulSet: ``POD_INDEX`` or, when a node count above 1 is given and no source names
   this node's rank, the ordinal ending the hostname ``<ws>-<n>``; the leader is then
   ``<ws>-0.<ws>-headless``. The StatefulSet sets no node count: it must come from our own
   ``--nnodes`` / ``KAITO_NNODES``.
5. Otherwise a single node.

An explicit leader address (option) may replace a convention's address without counting as a
disagreement: users pass a resolved IP where LWS gives a DNS name. The master port defaults to
vLLM's 29501.

``planning_only=True`` (dry runs, ``--sku``, ``--assume-gpus``, ``doctor``) answers "would it fit
on N nodes?" without a real group: a multi-node group with no rank is taken as rank 0 and one with
no leader gets the placeholder ``PLANNING_LEADER``; both are listed in ``Topology.assumed``. The
hostname ordinal is not read as the rank then: a CI runner (``ci-runner-7``), a compose container
(``proj-svc-3``) or a pod of another StatefulSet has such a name too, and a plan must not turn it
into an error or a worker. (A KAITO StatefulSet pod has ``POD_INDEX``, which is read, and its
hostname then still gives the leader.) Every value that *is* given is still checked as for a launch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from kaito_runtime.errors import RankOutsideGroupError, TopologyError
from kaito_runtime.numbers import parse_int
from kaito_runtime.types import Topology, TopologySource

DEFAULT_MASTER_PORT = 29501
# The largest group kaito-run forms. A group splits one model into tensor shards (bounded by its
# attention heads) and pipeline stages (bounded by its layers); the models vLLM serves fill far
# fewer nodes than this, so a larger count is a typo, not a cluster.
MAX_NODES = 1024
PLANNING_LEADER = "<leader>"  # stands in for the leader's address in a plan made without a group
_T = TypeVar("_T")
_HOST_ORDINAL_RE = re.compile(r"^(?P<ws>[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)-(?P<n>[0-9]+)$")


@dataclass(frozen=True)
class _Given:
    var: str  # what the user would look for: "LWS_GROUP_SIZE", "--nnodes/KAITO_NNODES"
    raw: str
    source: TopologySource

    def show(self) -> str:
        return f"{self.var}={self.raw!r}"


def _present(value: object) -> bool:
    return value is not None and str(value).strip() != ""


def _collect(
    env: Mapping[str, str], option: object, option_var: str, *env_vars: tuple[str, TopologySource]
) -> list[_Given]:
    out: list[_Given] = []
    if _present(option):
        out.append(_Given(option_var, str(option).strip(), "options"))
    for var, source in env_vars:
        if _present(env.get(var)):
            out.append(_Given(var, str(env[var]).strip(), source))
    return out


def _int(
    g: _Given, *, minimum: int, meaning: str, allow_range: bool = False, maximum: int | None = None
) -> int:
    text = g.raw
    if allow_range and ":" in text:
        lo, _, hi = text.partition(":")
        low, high = parse_int(lo), parse_int(hi)
        if low is not None and high is not None:
            if low != high:
                raise TopologyError(
                    f"{g.show()} asks for an elastic node range",
                    why="A vLLM launch has a fixed number of nodes, so MIN:MAX ranges are not supported",
                    fix=f"set {g.var} to one number (or MIN:MAX with MIN equal to MAX)",
                )
            text = lo
    value = parse_int(text)
    if value is None:
        raise TopologyError(
            f"{g.show()} is not a whole number",
            why=f"It gives {meaning}, written with the digits 0-9",
            fix=f"set {g.var} to an integer of at least {minimum}",
        )
    if value < minimum:
        raise TopologyError(
            f"{g.show()} is out of range",
            why=f"It gives {meaning}, which must be at least {minimum}",
            fix=f"set {g.var} to an integer of at least {minimum}",
        )
    if maximum is not None and value > maximum:
        raise TopologyError(
            f"{g.show()} is out of range",
            why=f"It gives {meaning}, which is at most {maximum}: a model splits over nodes by its "
            "attention heads and layers, and no model vLLM serves has enough to fill more",
            fix=f"set {g.var} to the group's real size, at most {maximum}",
        )
    return value


def _agree(field: str, values: list[tuple[_Given, _T]]) -> tuple[_Given, _T] | None:
    """The first (highest-precedence) value; TopologyError if another source differs."""
    if not values:
        return None
    first_g, first_v = values[0]
    for g, v in values[1:]:
        if v != first_v:
            raise TopologyError(
                f"{first_g.show()} and {g.show()} disagree about the {field}",
                why="Two sources of the node's place in its group give different values",
                fix=f"unset one of {first_g.var} and {g.var}, or make them equal",
            )
    return values[0]


def _check_address(g: _Given) -> str:
    addr = g.raw
    if any(c.isspace() for c in addr) or "://" in addr or "/" in addr:
        raise TopologyError(
            f"{g.show()} is not a host name or IP address",
            why="The leader address must be a bare host (no scheme, path or spaces)",
            fix=f"set {g.var} to the leader's host name or IP, e.g. myws-0.myws-headless",
        )
    return addr


def resolve_topology(
    env: Mapping[str, str],
    *,
    nnodes: int | None = None,
    node_rank: int | None = None,
    leader_address: str | None = None,
    master_port: int | None = None,
    hostname: str | None = None,
    planning_only: bool = False,
) -> Topology:
    """This node's Topology from explicit options and ``env`` (see the module doc for the order).

    With ``planning_only`` a missing rank or leader of a multi-node group is assumed instead of
    raising TopologyError (see the module doc); never use it for a real launch.
    """

    def opt_or_env(option: object, var: str) -> tuple[object, str]:
        flag = "--" + var.removeprefix("KAITO_").lower().replace("_", "-")
        if _present(option):
            return option, f"{flag}/{var}"
        return env.get(var), var

    n_opt, n_var = opt_or_env(nnodes, "KAITO_NNODES")
    r_opt, r_var = opt_or_env(node_rank, "KAITO_NODE_RANK")
    a_opt, a_var = opt_or_env(leader_address, "KAITO_LEADER_ADDRESS")
    p_opt, p_var = opt_or_env(master_port, "KAITO_MASTER_PORT")

    n_given = _collect(env, n_opt, n_var, ("PET_NNODES", "torchrun"), ("NNODES", "torchrun"),
                       ("LWS_GROUP_SIZE", "lws"))
    r_given = _collect(env, r_opt, r_var, ("PET_NODE_RANK", "torchrun"), ("NODE_RANK", "torchrun"),
                       ("LWS_WORKER_INDEX", "lws"), ("POD_INDEX", "kaito-statefulset"))
    a_given = _collect(env, a_opt, a_var, ("PET_MASTER_ADDR", "torchrun"), ("MASTER_ADDR", "torchrun"),
                       ("LWS_LEADER_ADDRESS", "lws"))
    p_given = _collect(env, p_opt, p_var, ("PET_MASTER_PORT", "torchrun"), ("MASTER_PORT", "torchrun"))

    nodes_meaning = "the number of nodes in the group"
    n_pick = _agree(
        "node count",
        [(g, _int(g, minimum=1, maximum=MAX_NODES, meaning=nodes_meaning,
                  allow_range=g.var in ("PET_NNODES", "NNODES")))
         for g in n_given],
    )
    r_pick = _agree("node rank", [(g, _int(g, minimum=0, meaning="this node's rank")) for g in r_given])
    p_pick = _agree("master port", [(g, _int(g, minimum=1, meaning="the rendezvous port")) for g in p_given])
    explicit_addr = [g for g in a_given if g.source == "options"]
    convention_addr = [(g, _check_address(g).lower()) for g in a_given if g.source != "options"]
    a_pick = _agree("leader address", convention_addr)
    address_g = explicit_addr[0] if explicit_addr else (a_pick[0] if a_pick else None)
    address = _check_address(address_g) if address_g else None

    count = n_pick[1] if n_pick else 1
    host = hostname if _present(hostname) else env.get("HOSTNAME")
    ordinal = _HOST_ORDINAL_RE.match((host or "").strip().split(".")[0].lower())
    statefulset = r_pick is not None and r_pick[0].source == "kaito-statefulset"

    assumed: list[str] = []
    rank_g: _Given | None
    if r_pick is not None:
        rank_g, rank = r_pick
    elif count > 1 and ordinal and not planning_only:
        rank_g = _Given("HOSTNAME", str(host).strip(), "kaito-statefulset")
        rank, statefulset = int(ordinal["n"]), True
    elif count > 1 and planning_only:
        rank_g, rank = None, 0
        assumed.append("node_rank")
    elif count > 1:
        assert n_pick is not None
        raise TopologyError(
            f"{n_pick[0].show()} makes this a multi-node group, but nothing says which node this is",
            why="No KAITO_NODE_RANK, PET_NODE_RANK, NODE_RANK, LWS_WORKER_INDEX or POD_INDEX is set "
            "and the hostname does not end in a StatefulSet ordinal",
            fix="set --node-rank/KAITO_NODE_RANK (0 on the leader)",
        )
    else:
        rank_g, rank = None, 0

    if rank >= count:
        assert rank_g is not None
        count_src = n_pick[0].show() if n_pick else "no node count given, so 1"
        raise RankOutsideGroupError(
            f"{rank_g.show()} gives node rank {rank}, which is not below the node count {count} "
            f"({count_src})",
            rank=rank,
            nnodes=count,
            why="Node ranks run from 0 to the node count minus 1",
            fix=f"check {rank_g.var} and {n_pick[0].var}"
            if n_pick
            else "set --nnodes/KAITO_NNODES to the group's size",
        )

    if count > 1 and address is None and statefulset and ordinal:
        ws = ordinal["ws"]
        address = f"{ws}-0.{ws}-headless"
    if count > 1 and address is None and planning_only:
        address = PLANNING_LEADER
        assumed.append("leader_address")
    if count > 1 and address is None:
        raise TopologyError(
            f"This node is rank {rank} of {count} ({(n_pick[0].show() if n_pick else '')}), "
            "but no leader address is given",
            why="Every node must know where the leader (rank 0) listens; none of KAITO_LEADER_ADDRESS, "
            "PET_MASTER_ADDR, MASTER_ADDR or LWS_LEADER_ADDRESS is set",
            fix="set --leader-address/KAITO_LEADER_ADDRESS to the leader's host name or IP",
        )

    port = p_pick[1] if p_pick else DEFAULT_MASTER_PORT
    if not 1 <= port <= 65535:
        assert p_pick is not None
        raise TopologyError(
            f"{p_pick[0].show()} is not a TCP port",
            why="Ports run from 1 to 65535",
            fix=f"set {p_pick[0].var} to a free port, e.g. {DEFAULT_MASTER_PORT}",
        )
    if count > 1 and port == 65535:
        assert p_pick is not None
        raise TopologyError(
            f"{p_pick[0].show()} leaves no port for the group's store",
            why="A group's leader hosts its store at the master port + 1, and 65536 is not a TCP port",
            fix=f"set {p_pick[0].var} to a free port pair, e.g. {DEFAULT_MASTER_PORT} (the store then uses {DEFAULT_MASTER_PORT + 1})",
        )

    # Named after what placed this node: the rank's source, else the first source that said anything.
    said = [g for g in (rank_g, n_pick and n_pick[0], address_g, p_pick and p_pick[0]) if g]
    source: TopologySource = "kaito-statefulset" if statefulset else (said[0].source if said else "default")
    return Topology(
        nnodes=count, node_rank=rank, leader_address=address, master_port=port, source=source,
        assumed=tuple(assumed),
    )


def leader_of(
    env: Mapping[str, str], *, leader_address: str | None = None, master_port: int | None = None,
    hostname: str | None = None,
) -> tuple[str | None, int]:
    """The leader's address and vLLM's master port as ``resolve_topology`` would find them, for a
    worker that does not know the group's size yet (``--join`` learns it from the leader)."""
    a_given = _collect(env, leader_address, "--leader-address/KAITO_LEADER_ADDRESS",
                       ("KAITO_LEADER_ADDRESS", "options"), ("PET_MASTER_ADDR", "torchrun"),
                       ("MASTER_ADDR", "torchrun"), ("LWS_LEADER_ADDRESS", "lws"))
    p_given = _collect(env, master_port, "--master-port/KAITO_MASTER_PORT", ("KAITO_MASTER_PORT", "options"),
                       ("PET_MASTER_PORT", "torchrun"), ("MASTER_PORT", "torchrun"))
    address = _check_address(a_given[0]) if a_given else None
    host = hostname if _present(hostname) else env.get("HOSTNAME")
    ordinal = _HOST_ORDINAL_RE.match((host or "").strip().split(".")[0].lower())
    if address is None and ordinal:
        address = f"{ordinal['ws']}-0.{ordinal['ws']}-headless"
    port = _int(p_given[0], minimum=1, meaning="the rendezvous port") if p_given else DEFAULT_MASTER_PORT
    return address, port

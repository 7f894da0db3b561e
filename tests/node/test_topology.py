"""Topology from options and environment conventions (torchrun, LWS, KAITO StatefulSet)."""

from __future__ import annotations

from typing import Any

import pytest

from kaito_runtime.errors import TopologyError
from kaito_runtime.node.topology import PLANNING_LEADER, resolve_topology
from kaito_runtime.types import Topology


def test_nothing_set_is_a_single_node() -> None:
    topo = resolve_topology({})
    assert topo == Topology(nnodes=1, node_rank=0, leader_address=None, master_port=29501, source="default")


def test_hostname_ordinal_alone_does_not_make_a_group() -> None:
    # a single-node StatefulSet pod "web-3" must not become rank 3 of 1
    assert resolve_topology({"HOSTNAME": "web-3"}) == Topology()


def test_process_counts_are_not_node_counts() -> None:
    env = {"WORLD_SIZE": "16", "RANK": "9", "GROUP_RANK": "1", "LOCAL_RANK": "1"}
    assert resolve_topology(env).nnodes == 1


# (env, keyword options, expected (nnodes, rank, leader, port, source))
GOOD: list[tuple[str, dict[str, str], dict[str, Any], tuple[int, int, str | None, int, str]]] = [
    (
        "options as keywords",
        {},
        {"nnodes": 2, "node_rank": 1, "leader_address": "10.0.0.5", "master_port": 30000},
        (2, 1, "10.0.0.5", 30000, "options"),
    ),
    (
        "options from KAITO_ env",
        {"KAITO_NNODES": "3", "KAITO_NODE_RANK": "0", "KAITO_LEADER_ADDRESS": "lead", "KAITO_MASTER_PORT": "4000"},
        {},
        (3, 0, "lead", 4000, "options"),
    ),
    (
        "keyword beats KAITO_ env (click gives flags precedence)",
        {"KAITO_NNODES": "3", "KAITO_NODE_RANK": "2", "KAITO_LEADER_ADDRESS": "lead"},
        {"nnodes": 2, "node_rank": 1},
        (2, 1, "lead", 29501, "options"),
    ),
    (
        "torchrun PET_ variables",
        {"PET_NNODES": "4", "PET_NODE_RANK": "3", "PET_MASTER_ADDR": "job-node-0-0.job", "PET_MASTER_PORT": "29500"},
        {},
        (4, 3, "job-node-0-0.job", 29500, "torchrun"),
    ),
    (
        "PET_NNODES as MIN:MAX with MIN == MAX",
        {"PET_NNODES": "2:2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "m"},
        {},
        (2, 1, "m", 29501, "torchrun"),
    ),
    (
        "plain NNODES / NODE_RANK / MASTER_ADDR / MASTER_PORT",
        {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.1.1.1", "MASTER_PORT": "1234"},
        {},
        (2, 0, "10.1.1.1", 1234, "torchrun"),
    ),
    (
        "PET_ and plain agreeing",
        {"PET_NNODES": "2", "NNODES": "2", "PET_NODE_RANK": "1", "NODE_RANK": "1", "MASTER_ADDR": "m"},
        {},
        (2, 1, "m", 29501, "torchrun"),
    ),
    (
        "LeaderWorkerSet",
        {"LWS_LEADER_ADDRESS": "llama-0.llama.default", "LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "2"},
        {},
        (4, 2, "llama-0.llama.default", 29501, "lws"),
    ),
    (
        "LWS with our own port and a resolved leader IP (explicit address may differ)",
        {"LWS_LEADER_ADDRESS": "llama-0.llama.default", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"},
        {"leader_address": "10.2.3.4", "master_port": 29600},
        (2, 1, "10.2.3.4", 29600, "lws"),
    ),
    (
        "LWS and our node count agreeing",
        {"KAITO_NNODES": "4", "LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "0", "LWS_LEADER_ADDRESS": "l"},
        {},
        (4, 0, "l", 29501, "lws"),
    ),
    (
        "KAITO StatefulSet with POD_INDEX and hostname",
        {"POD_INDEX": "1", "HOSTNAME": "phi-ws-1"},
        {"nnodes": 2},
        (2, 1, "phi-ws-0.phi-ws-headless", 29501, "kaito-statefulset"),
    ),
    (
        "KAITO StatefulSet from the hostname ordinal only",
        {},
        {"nnodes": 3, "hostname": "big-model-2"},
        (3, 2, "big-model-0.big-model-headless", 29501, "kaito-statefulset"),
    ),
    (
        "KAITO StatefulSet hostname as FQDN",
        {"KAITO_NNODES": "2", "HOSTNAME": "ws-0.ws-headless.default.svc.cluster.local"},
        {},
        (2, 0, "ws-0.ws-headless", 29501, "kaito-statefulset"),
    ),
    (
        "StatefulSet with an explicit leader address",
        {"POD_INDEX": "1", "HOSTNAME": "ws-1", "KAITO_LEADER_ADDRESS": "10.9.9.9"},
        {"nnodes": 2},
        (2, 1, "10.9.9.9", 29501, "kaito-statefulset"),
    ),
    (
        "POD_INDEX=0 without a node count is a single node",
        {"POD_INDEX": "0", "HOSTNAME": "ws-0"},
        {},
        (1, 0, None, 29501, "kaito-statefulset"),
    ),
    (
        "options win over torchrun for the rank when both agree",
        {"NODE_RANK": "1", "MASTER_ADDR": "m", "NNODES": "2"},
        {"node_rank": 1},
        (2, 1, "m", 29501, "options"),
    ),
    (
        "empty values count as unset",
        {"NNODES": "", "NODE_RANK": " ", "LWS_GROUP_SIZE": ""},
        {},
        (1, 0, None, 29501, "default"),
    ),
]


@pytest.mark.parametrize(("case", "env", "kw", "expected"), GOOD, ids=[g[0] for g in GOOD])
def test_conventions(case: str, env: dict[str, str], kw: dict[str, Any], expected: tuple) -> None:
    topo = resolve_topology(env, **kw)
    assert (topo.nnodes, topo.node_rank, topo.leader_address, topo.master_port, topo.source) == expected


# (case, env, keywords, words that must all appear in the message)
BAD: list[tuple[str, dict[str, str], dict[str, Any], list[str]]] = [
    ("non-integer count", {"KAITO_NNODES": "two"}, {}, ["KAITO_NNODES", "'two'", "whole number"]),
    ("non-integer LWS size", {"LWS_GROUP_SIZE": "4.0", "LWS_WORKER_INDEX": "0"}, {}, ["LWS_GROUP_SIZE"]),
    ("zero nodes", {"PET_NNODES": "0"}, {}, ["PET_NNODES", "at least 1"]),
    ("negative rank", {"NODE_RANK": "-1", "NNODES": "2", "MASTER_ADDR": "m"}, {}, ["NODE_RANK", "at least 0"]),
    ("non-integer rank", {"LWS_WORKER_INDEX": "x", "LWS_GROUP_SIZE": "2"}, {}, ["LWS_WORKER_INDEX"]),
    (
        "rank not below count",
        {"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "2", "LWS_LEADER_ADDRESS": "l"},
        {},
        ["LWS_WORKER_INDEX", "LWS_GROUP_SIZE", "not below"],
    ),
    ("rank without count", {"PET_NODE_RANK": "3"}, {}, ["PET_NODE_RANK", "KAITO_NNODES"]),
    ("POD_INDEX without count", {"POD_INDEX": "2", "HOSTNAME": "ws-2"}, {}, ["POD_INDEX", "KAITO_NNODES"]),
    ("hostname ordinal too big", {}, {"nnodes": 2, "hostname": "ws-5"}, ["HOSTNAME", "'ws-5'", "--nnodes"]),
    ("port too big", {"MASTER_PORT": "70000"}, {}, ["MASTER_PORT", "70000"]),
    ("port zero", {}, {"master_port": 0}, ["--master-port/KAITO_MASTER_PORT"]),
    ("port not a number", {"PET_MASTER_PORT": "http"}, {}, ["PET_MASTER_PORT"]),
    ("multi-node without leader", {"KAITO_NNODES": "2", "KAITO_NODE_RANK": "1"}, {}, ["KAITO_LEADER_ADDRESS"]),
    (
        "multi-node, no rank, no ordinal",
        {"KAITO_NNODES": "2", "KAITO_LEADER_ADDRESS": "l", "HOSTNAME": "laptop"},
        {},
        ["KAITO_NNODES", "KAITO_NODE_RANK"],
    ),
    (
        "our count vs LWS",
        {"KAITO_NNODES": "2", "LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "0", "LWS_LEADER_ADDRESS": "l"},
        {},
        ["KAITO_NNODES='2'", "LWS_GROUP_SIZE='4'", "disagree"],
    ),
    (
        "keyword count vs LWS",
        {"LWS_GROUP_SIZE": "4", "LWS_WORKER_INDEX": "0", "LWS_LEADER_ADDRESS": "l"},
        {"nnodes": 2},
        ["--nnodes/KAITO_NNODES='2'", "LWS_GROUP_SIZE='4'"],
    ),
    (
        "PET_NODE_RANK vs NODE_RANK",
        {"PET_NNODES": "4", "PET_NODE_RANK": "1", "NODE_RANK": "2", "MASTER_ADDR": "m"},
        {},
        ["PET_NODE_RANK='1'", "NODE_RANK='2'"],
    ),
    (
        "POD_INDEX vs our rank",
        {"POD_INDEX": "1", "HOSTNAME": "ws-1"},
        {"nnodes": 2, "node_rank": 0},
        ["--node-rank/KAITO_NODE_RANK='0'", "POD_INDEX='1'"],
    ),
    (
        "master ports disagree",
        {"PET_MASTER_PORT": "29500", "MASTER_PORT": "29501"},
        {},
        ["PET_MASTER_PORT", "MASTER_PORT='29501'"],
    ),
    (
        "leader addresses of two conventions disagree",
        {"MASTER_ADDR": "a", "LWS_LEADER_ADDRESS": "b", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"},
        {},
        ["MASTER_ADDR='a'", "LWS_LEADER_ADDRESS='b'"],
    ),
    ("node count above the bound", {}, {"nnodes": 1025}, ["--nnodes/KAITO_NNODES", "1025", "out of range"]),
    ("LWS group size above the bound", {"LWS_GROUP_SIZE": "5000", "LWS_WORKER_INDEX": "0"}, {}, ["LWS_GROUP_SIZE"]),
    (
        "master port 65535 in a group",
        {"KAITO_NNODES": "2", "KAITO_NODE_RANK": "0", "KAITO_LEADER_ADDRESS": "l", "KAITO_MASTER_PORT": "65535"},
        {},
        ["KAITO_MASTER_PORT", "store", "65536"],
    ),
    ("elastic range", {"PET_NNODES": "1:4", "PET_NODE_RANK": "0"}, {}, ["PET_NNODES", "'1:4'", "elastic"]),
    ("address with scheme", {}, {"leader_address": "http://x"}, ["--leader-address/KAITO_LEADER_ADDRESS"]),
]


@pytest.mark.parametrize(("case", "env", "kw", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_values(case: str, env: dict[str, str], kw: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(TopologyError) as err:
        resolve_topology(env, **kw)
    assert err.value.exit_code == 2
    for w in words:
        assert w in err.value.message, (w, err.value.message)
    assert err.value.fix  # tells how to fix it


def test_the_largest_group_and_a_lone_node_on_port_65535_are_accepted() -> None:
    largest = resolve_topology({}, nnodes=1024, node_rank=1023, leader_address="l")
    assert (largest.nnodes, largest.node_rank) == (1024, 1023)
    lone = resolve_topology({"KAITO_MASTER_PORT": "65535"})
    assert (lone.nnodes, lone.master_port) == (1, 65535)


def test_is_pure_and_ignores_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LWS_GROUP_SIZE", "4")
    monkeypatch.setenv("HOSTNAME", "ws-3")
    assert resolve_topology({}) == Topology()


# --- planning without a real group (dry runs, --sku, --assume-gpus) -------------------------------


def test_planning_assumes_rank_and_leader_of_a_bare_node_count() -> None:
    topo = resolve_topology({}, nnodes=2, planning_only=True)
    assert (topo.nnodes, topo.node_rank, topo.leader_address) == (2, 0, PLANNING_LEADER)
    assert topo.assumed == ("node_rank", "leader_address")
    assert topo.source == "options" and topo.is_leader


def test_without_planning_a_bare_node_count_still_fails() -> None:
    with pytest.raises(TopologyError, match="nothing says which node this is"):
        resolve_topology({}, nnodes=2)
    with pytest.raises(TopologyError, match="no leader address is given"):
        resolve_topology({}, nnodes=2, node_rank=0)


def test_planning_assumes_only_what_is_missing() -> None:
    leader_missing = resolve_topology({}, nnodes=2, node_rank=1, planning_only=True)
    assert leader_missing.node_rank == 1 and leader_missing.assumed == ("leader_address",)
    rank_missing = resolve_topology({"KAITO_LEADER_ADDRESS": "10.0.0.1"}, nnodes=4, planning_only=True)
    assert rank_missing.leader_address == "10.0.0.1" and rank_missing.assumed == ("node_rank",)
    # POD_INDEX names the rank, and the StatefulSet hostname then gives the leader: nothing assumed
    sts = resolve_topology({"POD_INDEX": "1", "HOSTNAME": "ws-1"}, nnodes=2, planning_only=True)
    assert (sts.node_rank, sts.leader_address, sts.assumed) == (1, "ws-0.ws-headless", ())


@pytest.mark.parametrize("hostname", ["ci-runner-7", "myws-1", "proj-svc-3"])
def test_planning_ignores_a_hostname_ordinal(hostname: str) -> None:
    """A CI runner or compose container name is no rank: the plan is rank 0 with a placeholder
    leader, neither an error (ordinal 7 of 2 nodes) nor a worker of a made-up group."""
    for topo in (
        resolve_topology({"HOSTNAME": hostname}, nnodes=2, planning_only=True),
        resolve_topology({}, nnodes=2, hostname=hostname, planning_only=True),
    ):
        assert (topo.node_rank, topo.leader_address) == (0, PLANNING_LEADER)
        assert topo.assumed == ("node_rank", "leader_address") and topo.is_leader


def test_a_real_launch_still_reads_the_hostname_ordinal() -> None:
    topo = resolve_topology({"HOSTNAME": "myws-1"}, nnodes=2)
    assert (topo.node_rank, topo.leader_address, topo.source) == (1, "myws-0.myws-headless", "kaito-statefulset")
    with pytest.raises(TopologyError, match="not below the node count"):
        resolve_topology({"HOSTNAME": "ci-runner-7"}, nnodes=2)


def test_planning_assumes_nothing_for_a_single_node_or_a_full_group() -> None:
    assert resolve_topology({}, planning_only=True) == Topology()
    full = resolve_topology({}, nnodes=2, node_rank=1, leader_address="l", planning_only=True)
    assert full.assumed == ()


@pytest.mark.parametrize(
    ("env", "kw", "words"),
    [
        ({}, {"nnodes": 2, "node_rank": 2}, "not below the node count"),
        ({"KAITO_NODE_RANK": "x"}, {"nnodes": 2}, "not a whole number"),
        ({"NNODES": "3"}, {"nnodes": 2}, "disagree"),
        ({}, {"nnodes": 2, "leader_address": "http://x"}, "not a host name"),
        ({}, {"nnodes": 2, "master_port": 70000}, "not a TCP port"),
    ],
)
def test_planning_still_checks_given_values(env: dict[str, str], kw: dict[str, Any], words: str) -> None:
    with pytest.raises(TopologyError, match=words):
        resolve_topology(env, planning_only=True, **kw)

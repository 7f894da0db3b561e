"""The group's calls for one launch, through a real store on loopback: what the leader publishes
is what a --join worker learns, a worker outside the leader's node count is told why, a single
node has no group, and a bad secret file fails before any group exists."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

from kaito_runtime.errors import GroupMismatchError, InputError
from kaito_runtime.launch.group import (
    GroupSecret, before_the_group, for_launch, group_secret, join_the_leader, open_for_workers,
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

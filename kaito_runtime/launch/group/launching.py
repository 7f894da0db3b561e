"""The group as one launch uses it, in the order the API calls it: the secret (before anything
slow), this node's ``Group`` (the leader's ports checked), what the leader publishes for a
``--join`` worker and what that worker learns, the facts a node brings to the check-in, and the
end of a round of vLLM. Plain values in, so the API only orders these calls.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kaito_runtime.errors import GroupMemberLostError, GroupMismatchError, InputError, RankOutsideGroupError
from kaito_runtime.launch.group.addresses import DEFAULT_TIMEOUT_S
from kaito_runtime.launch.group.member import DEFAULT_PEER_TIMEOUT_S, Group, GroupSettings, NodeFacts, learn_from_leader
from kaito_runtime.launch.group.secret import GroupSecret, api_key_digest, load_group_secret
from kaito_runtime.launch.group.store import StopKind, plan_fields, preload_torch
from kaito_runtime.types import LaunchPlan, ModelSpec, NodeInventory, PlanOverrides, Topology

if TYPE_CHECKING:
    from kaito_runtime.launch.vllm_command import VllmLaunch


class GroupAsked(Protocol):
    """This node's place in a group as the request asks it (the settled request's group slice)."""

    nnodes: int | None
    node_rank: int | None
    leader_address: str | None
    master_port: int | None
    rendezvous_timeout: float | None
    peer_timeout: float | None
    join: bool
    secret_file: str | None
    max_restarts: int


@dataclass(frozen=True)
class Published:
    """What the leader publishes for its ``--join`` workers: the model and the settings that make
    their plans the same as its own. No secret: the group's request drops them."""

    preset: str | None
    model: str | None
    revision: str | None
    served_model_name: str | None
    nnodes: int
    overrides: PlanOverrides  # without cpu_cores: each node keeps its own
    vllm_args: tuple[str, ...]  # the config file's flags first, the pass-through ones after
    leader_address: str | None = None  # where a worker found it (not published)
    master_port: int | None = None

    def wire(self) -> dict[str, object]:
        overrides = {k: v for k, v in dataclasses.asdict(self.overrides).items() if k != "cpu_cores"}
        return {"preset": self.preset, "model": self.model, "revision": self.revision,
                "served_model_name": self.served_model_name, "nnodes": self.nnodes, "overrides": overrides,
                "vllm_args": list(self.vllm_args)}

    @classmethod
    def from_wire(cls, published: Mapping, *, leader_address: str, master_port: int) -> Published:
        return cls(preset=published["preset"], model=published["model"], revision=published["revision"],
                   served_model_name=published["served_model_name"], nnodes=int(published["nnodes"]),
                   overrides=PlanOverrides(**published["overrides"]), vllm_args=tuple(published["vllm_args"]),
                   leader_address=leader_address, master_port=master_port)


def is_multi_node(asked: GroupAsked, env: Mapping[str, str]) -> bool:
    """Whether this launch is one node of a group (a cheap look at options and environment; a
    mistake there is reported by the real topology step later)."""
    from kaito_runtime.node import resolve_topology

    if asked.join:
        return True
    try:
        return resolve_topology(env, nnodes=asked.nnodes, node_rank=asked.node_rank, leader_address=asked.leader_address,
                                master_port=asked.master_port, planning_only=True).multi_node
    except InputError:
        return False


def before_the_group(asked: GroupAsked, env: Mapping[str, str]) -> GroupSecret | None:
    """On a node of a group: torch loaded now (the store needs it) and the group secret
    (--group-secret-file, KAITO_GROUP_SECRET) read and registered for redaction, so a bad file
    fails before anything slow. None on one node, or in a group without a secret."""
    if not is_multi_node(asked, env):
        return None
    preload_torch()
    return group_secret(asked, env)


def group_secret(asked: GroupAsked, env: Mapping[str, str]) -> GroupSecret | None:
    from kaito_runtime.secrets import register_secret

    secret = load_group_secret(asked.secret_file, env)
    if secret is not None:
        register_secret(secret.key.decode(errors="replace"))
    return secret


def join_the_leader(asked: GroupAsked, env: Mapping[str, str], secret: GroupSecret | None,
                    log: logging.Logger) -> Published:
    """--join: what the group serves, from the leader's store (model, revision, node count, plan
    options, vLLM arguments). This node keeps its own rank, ports, cores, folders and token."""
    from kaito_runtime.node import leader_of, resolve_topology

    address, master_port = leader_of(env, leader_address=asked.leader_address, master_port=asked.master_port)
    if address is None:
        raise InputError("--join needs the leader's address",
                         fix="set --leader-address/KAITO_LEADER_ADDRESS (or run where LWS, torchrun or the KAITO StatefulSet sets it)")
    published = Published.from_wire(
        learn_from_leader(address, master_port, timeout_s=asked.rendezvous_timeout or DEFAULT_TIMEOUT_S, secret=secret, log=log),
        leader_address=address, master_port=master_port,
    )
    try:
        resolve_topology(env, nnodes=published.nnodes, node_rank=asked.node_rank, leader_address=address,
                         master_port=master_port, planning_only=False)
    except RankOutsideGroupError as exc:
        raise GroupMismatchError(f"This node's rank {exc.rank} is outside the leader's group of {exc.nnodes} nodes "
                                 f"(ranks 0..{exc.nnodes - 1})", why="a --join worker takes the node count from the leader",
                                 fix="give this node a rank below the leader's --nnodes, or start the leader with more nodes") from None
    log.info("joined the group of %s: %s%s, %d nodes", address, published.preset or published.model,
             f"@{published.revision}" if published.revision else "", published.nnodes)
    return published


def for_launch(asked: GroupAsked, topology: Topology, secret: GroupSecret | None, env: Mapping[str, str],
               log: logging.Logger) -> Group | None:
    """This node's group (None on one node): the one owner of the store, the check-in, the watch
    and the leave. The leader checks vLLM's master port and the store's here, naming --master-port."""
    if not topology.multi_node:
        return None
    settings = GroupSettings(topology, rendezvous_timeout_s=asked.rendezvous_timeout or DEFAULT_TIMEOUT_S,
                             peer_timeout_s=asked.peer_timeout or DEFAULT_PEER_TIMEOUT_S, secret=secret,
                             max_restarts=asked.max_restarts)
    group = Group(settings, env=env, log=log)
    if topology.is_leader:
        group.check_ports()
    return group


def report_weights(group: Group | None, figures: Callable[[], object]) -> None:
    """A worker, before its weights step: its progress beat carries the step's figures
    (``figures()``: the launcher's WeightsFigures), so the leader's "waiting for rank N" line says
    what a rank that has not checked in yet is doing. Nothing on the leader or on one node."""
    if group is not None and not group.topology.is_leader:
        group.report_progress(lambda: weights_progress(figures()))


def weights_progress(figures: object) -> str:
    """One phrase for the weights step's figures (done_bytes, total_bytes, speed_bytes_per_second)."""
    done, total = getattr(figures, "done_bytes", None), getattr(figures, "total_bytes", None)
    speed = getattr(figures, "speed_bytes_per_second", -1.0)
    if done is None or not total:
        return "weights step: no download under way (checking or reusing the copy on disk)"
    if done >= total:
        return f"weights on disk ({total / 1e9:.2f} GB)"
    rate = f", {speed / 1e6:.1f} MB/s" if speed > 0 else ""
    return f"downloading weights: {done / 1e9:.2f} of {total / 1e9:.2f} GB ({100 * done / total:.0f} %{rate})"


def open_for_workers(group: Group | None, model, overrides: PlanOverrides, vllm_args: tuple[str, ...]) -> None:
    """The leader opens the group's store before its weights step, and publishes there what a
    worker started with --join needs to plan the same launch (``model``: the settled request's
    model slice; ``vllm_args`` without secrets). Nothing on a worker or on one node."""
    if group is None or not group.topology.is_leader:
        return
    group.open()
    group.publish_request(Published(model.preset, model.model, model.revision, model.served_model_name, group.nnodes,
                                    overrides, tuple(vllm_args)).wire())


def node_facts(inventory: NodeInventory, plan: LaunchPlan, model: ModelSpec, built: VllmLaunch, install,
               revision: str | None, secret: GroupSecret | None) -> NodeFacts:
    """What this node brings to the check-in (after its weights step: ``revision`` is the one
    the weights step saw, a store's objects' version digest for a store's model)."""
    import kaito_runtime

    resources = (
        {"gpu_count": inventory.gpu_count, "gpu_memory_bytes": sum(g.total_bytes for g in inventory.gpus)}
        if plan.target != "cpu"
        else {"cpu_cores": inventory.host.cpu_count, "ram_bytes": inventory.host.ram_total_bytes}
    )
    digest = api_key_digest(built.api_key, secret) if built.api_key else None
    return NodeFacts(
        resources=resources,
        kaito_runtime_version=kaito_runtime.__version__,
        vllm_version=install.version if install is not None else "-",
        plan_fields=plan_fields(model.repo_id or model.store_uri or model.name, revision or model.revision,
                                built.argv, api_key_digest=digest),
    )


def end_the_round(group: Group, outcome, plan: LaunchPlan, built: VllmLaunch, ready_timeout: float | None,
                  log: logging.Logger) -> int | None:
    """This node's vLLM has stopped: tell the group why (or learn that a peer ended it). None
    when the group meets again (a loss within the restart budget); else the exit code, the group
    ending as one unit: 0 for a stop someone asked for, 22 where a member was lost (and, with a
    restart budget, on the node whose budget is spent), and with --max-restarts 0 the node whose
    own vLLM failed keeps vLLM's code (its failure report says why)."""
    from kaito_runtime import termination
    from kaito_runtime.launch.report import log_failure
    from kaito_runtime.launch.supervisor import describe_exit_code

    rank = group.rank
    own_failure = outcome.outcome in ("exited", "ready_timeout") and outcome.signal_received is None
    failure = log_failure(outcome, plan, built, ready_timeout, log) if own_failure and outcome.exit_code != 0 else ""
    stop = group.end_round(vllm_exit=describe_exit_code(outcome.exit_code), signalled=outcome.signal_received is not None)
    if group.meets_again:
        return None  # a failure the group restarts from is not why the pod ends: nothing noted
    group.leave()
    if outcome.outcome == "group_stopped" and stop is not None:
        if stop.kind is StopKind.REQUESTED:
            log.info("rank %d stopped with its group: %s", rank, stop.reason)
        else:
            log.error("rank %d stopped: a group member was lost (exit %d): %s", rank, outcome.exit_code, stop.reason)
            termination.note_cause(f"rank {rank} stopped: a group member was lost: {stop.reason}")
        return outcome.exit_code
    if own_failure:
        log.error("rank %d: vLLM exited (exit %d); the group stops with it%s", rank, outcome.exit_code,
                  f" ({stop.reason})" if stop is not None and stop.rank == rank else "")
        ours = f"rank {rank}: {stop.reason}" if stop is not None and stop.rank == rank else ""  # names a spent budget
        termination.note_cause("; ".join(part for part in (ours, failure) if part))
        if group.settings.max_restarts > 0 or outcome.exit_code == 0:
            return GroupMemberLostError.exit_code  # a spent budget: every node exits 22, naming the rank
        return outcome.exit_code
    return outcome.exit_code

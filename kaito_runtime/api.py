"""The Python API behind `kaito-run`: one launch as one straight pass.

    RuntimeRequest -> ModelSpec -> NodeInventory + Topology -> LaunchPlan
        -> vLLM installed? -> weights -> the group meets (multi-node) -> argv + env -> supervise

`prepare()` stops after the plan; `dry_run()` adds the command the plan would start (what
--dry-run shows); `run()` goes on to fetch the weights and supervise vLLM; `download_weights()`
(--download-only) fetches the weights without probing or planning. Nothing before the weights
step downloads weights, imports torch or vLLM, or starts a process. This module only orders
the steps; each step lives in its own module.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime.errors import InputError, WeightsError
from kaito_runtime.model_choice import download_spec, resolve_model
from kaito_runtime.request import (
    CONTAINER_WEIGHTS_DIR,
    RuntimeRequest,
    default_weights_dir,
    is_offline,
    uses_local_folder,
    weights_dir_of,
)
from kaito_runtime.values import LaunchPlan, ModelSpec, NodeInventory, Topology

if TYPE_CHECKING:
    from kaito_runtime.rendezvous import RendezvousInfo
    from kaito_runtime.vllm_command import VllmLaunch
    from kaito_runtime.weights import WeightsResult

log = logging.getLogger("kaito_runtime")

FAILURE_TAIL_LINES = 20

__all__ = [
    "CONTAINER_WEIGHTS_DIR",
    "PhaseTimes",
    "Prepared",
    "RuntimeRequest",
    "default_weights_dir",
    "download_weights",
    "dry_run",
    "fetch_model_weights",
    "fetch_weights",
    "is_offline",
    "prepare",
    "probe_node",
    "resolve_model",
    "resolve_topology",
    "run",
    "uses_local_folder",
]


@dataclass(frozen=True)
class PhaseTimes:
    model: float = 0.0
    inventory: float = 0.0
    plan: float = 0.0
    weights: float = 0.0
    vllm_start: float = 0.0

    def line(self) -> str:
        return (
            f"model {self.model:.2f} s, inventory {self.inventory:.2f} s, plan {self.plan:.2f} s, "
            f"weights {self.weights:.2f} s, vLLM start {self.vllm_start:.1f} s"
        )


@dataclass(frozen=True)
class Prepared:
    """Everything known before anything slow happens (no launch yet: that needs the weights'
    folder and, on several nodes, the leader's address)."""

    request: RuntimeRequest
    model: ModelSpec
    inventory: NodeInventory
    topology: Topology
    plan: LaunchPlan
    model_path: Path  # where the weights will be (exact for presets, folders and pinned commits)
    times: PhaseTimes
    token_source: str | None = None
    config_args: Mapping[str, object] | None = None  # the config file's `vllm:` section, read once


def probe_node(request: RuntimeRequest, env: Mapping[str, str]) -> NodeInventory:
    """This node's GPUs and host, or the ones --sku / --assume-gpus describe."""
    from kaito_runtime import inventory, skus

    if request.sku and request.assume_gpus:
        raise InputError("Both --sku and --assume-gpus were given", fix="use one of them")
    if request.sku:
        return skus.inventory_for_sku(request.sku)
    if request.assume_gpus:
        return skus.inventory_for_assumed_gpus(request.assume_gpus)
    return inventory.probe_inventory(weights_dir=weights_dir_of(request, env), env=env)


def resolve_topology(request: RuntimeRequest, env: Mapping[str, str], *, planning_only: bool = False) -> Topology:
    """This node's place in its group. ``planning_only``: a multi-node plan may go without a rank
    (taken as 0) or a leader address (a placeholder); a real launch must have both."""
    from kaito_runtime import topology

    return topology.resolve_topology(
        env,
        nnodes=request.nnodes,
        node_rank=request.node_rank,
        leader_address=request.leader_address,
        master_port=request.master_port,
        planning_only=planning_only,
    )


def prepare(
    request: RuntimeRequest, env: Mapping[str, str] | None = None, *, planning_only: bool | None = None
) -> Prepared:
    """Resolve the model, read the node and the config file, plan the launch. No weights, no processes.

    ``planning_only`` defaults to ``request.planning_only`` (a dry run, --sku or --assume-gpus);
    ``run()`` passes False, because a real multi-node launch needs its rank and leader. The
    inventory's notes and the config file's notes are logged here, once.
    """
    from kaito_runtime import planner, secrets, weights

    env = dict(os.environ if env is None else env)
    planning_only = request.planning_only if planning_only is None else planning_only
    token, token_source = secrets.resolve_token(env, request.token_file)
    request = replace(request, weights_dir=weights_dir_of(request, env))
    config_args = _read_config(request)

    started = time.monotonic()
    model = resolve_model(request, token=token, token_source=token_source, env=env)
    model_seconds = time.monotonic() - started

    started = time.monotonic()
    node = probe_node(request, env)
    for note in node.notes:
        log.warning("%s", note)
    topo = resolve_topology(request, env, planning_only=planning_only)
    inventory_seconds = time.monotonic() - started

    started = time.monotonic()
    plan = planner.plan_launch(model, node, topo, request.overrides)
    assert request.weights_dir is not None
    model_path = Path(model.local_path) if model.local_path else weights.planned_path(model, request.weights_dir)
    plan_seconds = time.monotonic() - started
    return Prepared(
        request=request,
        model=model,
        inventory=node,
        topology=topo,
        plan=plan,
        model_path=model_path,
        times=PhaseTimes(model=model_seconds, inventory=inventory_seconds, plan=plan_seconds),
        token_source=token_source if token is not None else None,
        config_args=config_args,
    )


def dry_run(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> tuple[Prepared, VllmLaunch]:
    """--dry-run: the plan and the exact command it would start (the installed vLLM's form when
    there is one). Nothing is downloaded or started."""
    from kaito_runtime import launch, vllm_install

    env = dict(os.environ if env is None else env)
    prepared = prepare(request, env)
    built = launch.build_launch(
        prepared.request, prepared.plan, prepared.model_path, env, vllm_install.detect_vllm(), prepared.config_args
    )
    return prepared, built


def fetch_model_weights(model: ModelSpec, request: RuntimeRequest, env: Mapping[str, str] | None = None) -> WeightsResult:
    """The weights step for ``model``: returns weights.WeightsResult (the local folder for vLLM).

    An operating-system error on the way (permissions, a full or read-only volume) becomes a
    WeightsError (exit 10) naming the path, not a traceback.
    """
    from kaito_runtime import secrets, weights

    env = dict(os.environ if env is None else env)
    weights_dir = weights_dir_of(request, env)
    token, token_source = secrets.resolve_token(env, request.token_file)
    try:
        return weights.ensure_weights(
            model,
            weights_dir=weights_dir,
            token=token,
            token_source=token_source,
            offline=is_offline(request, env),
            endpoint=request.endpoint,
            verify=request.verify_weights,
        )
    except OSError as e:
        where = e.filename or weights_dir
        raise WeightsError(
            f"The weights step failed at {where}",
            why=e.strerror or str(e) or type(e).__name__,
            fix="check that the weights folder (--weights-dir / KAITO_WEIGHTS_DIR) is writable, "
            "mounted read-write and has free space",
        ) from e


def fetch_weights(prepared: Prepared, env: Mapping[str, str] | None = None) -> WeightsResult:
    """The weights step of a prepared launch."""
    return fetch_model_weights(prepared.model, prepared.request, env)


def download_weights(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> WeightsResult:
    """`--download-only`: fetch the model's weights. No probe and no plan: an init container
    usually has no GPU, so whether the model fits is a question for the serving pod. A repo id's
    config.json is not read either (see ``model_choice.download_spec``)."""
    from kaito_runtime import weights_store

    env = dict(os.environ if env is None else env)
    request = replace(request, weights_dir=weights_dir_of(request, env))
    if not uses_local_folder(request):
        assert request.weights_dir is not None
        weights_store.check_weights_dir(request.weights_dir)  # this mode exists to write there
    started = time.monotonic()
    model = download_spec(request)
    log.info(
        "download-only: fetching %s (%s); whether it fits this machine is not checked in this mode",
        model.name,
        model.local_path or f"{model.repo_id}@{model.revision or 'main'}",
    )
    result = fetch_model_weights(model, request, env)
    commit = f" ({result.revision})" if result.revision else ""
    log.info("weights ready at %s%s (%.2f s)", result.path, commit, time.monotonic() - started)
    return result


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False) -> int:
    """The whole chain: plan, vLLM check, weights, rendezvous, vLLM, supervision. Returns the
    process exit code."""
    from kaito_runtime import failures, launch, secrets, supervisor, weights_store

    entered = time.monotonic()
    env = dict(os.environ if env is None else env)
    if download_only:
        download_weights(request, env)
        return 0
    if not uses_local_folder(request):
        # Only that the path can be a folder: a read-only volume holding a complete copy is fine.
        weights_store.check_weights_dir(weights_dir_of(request, env), writable=False)
    prepared = prepare(request, env, planning_only=False)
    _log_plan_summary(prepared)
    install = launch.installed_vllm(prepared.model, prepared.topology, log)

    started = time.monotonic()
    result = fetch_weights(prepared, env)
    weights_seconds = time.monotonic() - started
    log.info("weights ready at %s (%.2f s)", result.path, weights_seconds)

    plan, meeting = prepared.plan, None
    if prepared.topology.multi_node:
        plan, meeting = _meet_the_group(prepared, env)
    built = launch.build_launch(prepared.request, plan, Path(result.path), env, install, prepared.config_args)
    for warning in built.warnings:
        log.warning("%s", warning)
    added = meeting.child_env(env) if meeting is not None else {}
    child_env = launch.child_environment(built, env, added)

    # What vLLM will really use: pass-through arguments and the config file may override ours.
    host, port = built.host, built.port
    served_names = built.served_model_names or (prepared.model.name,)
    times = replace(prepared.times, weights=weights_seconds)

    def on_ready(seconds: float) -> None:
        log.info(
            "ready in %.1f s (%s): serving %s on http://%s:%d/v1",
            time.monotonic() - entered,
            replace(times, vllm_start=seconds).line(),
            served_names[0],
            host,
            port,
        )

    readiness = None
    if prepared.topology.is_leader:
        readiness = supervisor.ReadinessCheck(host=host, port=port, served_name=served_names, api_key=built.api_key)
    secrets.register_secret(built.api_key)
    log.info("starting vLLM: %s", launch.start_line(built, added))
    outcome = supervisor.supervise(
        built.argv,
        child_env,
        ready=readiness,
        grace_seconds=request.grace_seconds,
        # A headless worker has no server to become ready; it lives as long as the group does.
        ready_timeout=request.ready_timeout if readiness is not None else None,
        on_ready=on_ready,
        log=log,
    )
    if outcome.exit_code != 0 and outcome.signal_received is None:
        # A known cause: one line. Otherwise (or only the generic "engine core failed"), vLLM's
        # last lines first, because in a long container log the real cause has scrolled away.
        log.error(
            "%s",
            failures.failure_report(
                outcome.tail,
                outcome.exit_code,
                plan_hint=failures.FailureContext.from_launch(prepared.plan, built),
                tail_lines=FAILURE_TAIL_LINES,
                outcome=outcome.outcome,
                ready_timeout=request.ready_timeout,
            ),
        )
    return outcome.exit_code


def _read_config(request: RuntimeRequest) -> Mapping[str, object] | None:
    """The config file's `vllm:` flags; its notes (keys read and ignored) are logged here, once."""
    if not request.config_file:
        return None
    from kaito_runtime.config_file import read_config

    config = read_config(request.config_file)
    for note in config.notes:
        log.info("%s", note)
    return config.vllm_args


def _meet_the_group(prepared: Prepared, env: Mapping[str, str]) -> tuple[LaunchPlan, RendezvousInfo | None]:
    """Multi-node: resolve the leader to an IP, find this node's address, wait for the leader.

    Returns the plan with --master-addr set to the leader's IP, and what the rendezvous found
    (its ``child_env`` is the single source of VLLM_HOST_IP and the socket interface variables).
    vLLM's own torch.distributed rendezvous follows; this step only makes sure it starts from
    addresses that work.
    """
    from kaito_runtime import rendezvous

    timeout = prepared.request.rendezvous_timeout or rendezvous.DEFAULT_TIMEOUT_S
    meeting = rendezvous.prepare_rendezvous(prepared.topology, env=env, log=log, timeout_s=timeout)
    return rendezvous.with_master_ip(prepared.plan, meeting), meeting


def _log_plan_summary(prepared: Prepared) -> None:
    plan = prepared.plan
    log.info(
        "plan: %s on %s, TP %d x PP %d, max-model-len %s",
        prepared.model.name,
        plan.target.upper(),
        plan.tensor_parallel_size,
        plan.pipeline_parallel_size,
        "auto" if plan.max_model_len_auto else plan.max_model_len,
    )
    for decision in plan.decisions:
        log.info("  %s: %s (%s)", decision.topic, decision.choice, decision.reason)

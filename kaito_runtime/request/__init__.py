"""RuntimeRequest: what the user asked for (flags and environment), and the defaults read from
the environment around it. Values and pure look-ups only; nothing here touches the network."""

from __future__ import annotations

import os
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass, field, replace
from pathlib import Path

from kaito_runtime import numbers
from kaito_runtime.errors import InputError
from kaito_runtime.types import LAUNCH_COMMANDS, Concern, OptionSpec, PlanOverrides, option

CONTAINER_WEIGHTS_DIR = Path("/workspace/weights")
DEFAULT_CHAT_TEMPLATE_DIR = "/workspace/chat_templates"


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUTHY = ("1", "true", "yes", "on")


def offline_in(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for no Hub access (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` truthy).

    The one rule for reading those variables; pass the environment the caller was given."""
    return any(env.get(name, "").strip().lower() in _TRUTHY for name in OFFLINE_ENV)


_WITH_DOCTOR = (*LAUNCH_COMMANDS, "doctor")


@dataclass(frozen=True)
class RuntimeRequest:
    """What the user asked for, from flags and environment. Each field that is an option
    declares it (flag, environment twin, help, concern) beside its default: the CLI's options
    and docs/configuration.md are generated from these declarations (``request.options``)."""

    # -- the model ----------------------------------------------------------------------------
    preset: str | None = option(
        None, "--preset", env="KAITO_PRESET", concern=Concern.MODEL,
        help="Built-in preset name (see list-presets), or a Hugging Face id ORG/NAME[@REVISION] as KAITO's preset name takes it.",
    )
    model: str | None = option(  # a Hugging Face repo id or a local folder
        None, "--model", env="KAITO_MODEL", concern=Concern.MODEL,
        help="A Hugging Face repo id (org/name) or a local model folder, instead of --preset.",
    )
    revision: str | None = option(
        None, "--revision", env="KAITO_REVISION", concern=Concern.MODEL,
        help="Commit, branch or tag for --model ORG/NAME (resolved to a commit and pinned); presets pin their own.",
    )
    catalog_dir: Path | None = option(  # a platform team's presets beside the built-in ones
        None, "--catalog-dir", env="KAITO_CATALOG_DIR", kind="dir", concern=Concern.MODEL,
        commands=(*LAUNCH_COMMANDS, "list-presets"),
        help="Folder of your own preset catalog files (*.yaml, the schema of the built-in presets/); "
        "their names must not be built-in names.",
    )
    served_model_name: str | None = option(
        None, "--served-model-name", env="KAITO_SERVED_MODEL_NAME", concern=Concern.MODEL,
        help="Name clients use in requests (default: the preset name, or the model folder/repo name).",
    )
    adapters_dir: Path | None = option(  # LoRA adapters, one sub-folder each (KAITO: /mnt/adapter)
        None, "--adapters-dir", env="KAITO_ADAPTERS_DIR", kind="dir", concern=Concern.MODEL,
        help="Folder of LoRA adapters, one sub-folder with an adapter_config.json each (KAITO mounts "
        "/mnt/adapter); each is served under its folder name.",
    )
    overrides: PlanOverrides = field(default_factory=PlanOverrides)  # its fields declare their options
    # -- the node -----------------------------------------------------------------------------
    sku: str | None = option(
        None, "--sku", env="KAITO_SKU", concern=Concern.NODE, commands=_WITH_DOCTOR,
        help="Plan for this cloud GPU SKU instead of the local GPUs (e.g. Standard_NC96ads_A100_v4, p5.48xlarge).",
    )
    assume_gpus: str | None = option(
        None, "--assume-gpus", env="KAITO_ASSUME_GPUS", concern=Concern.NODE, commands=_WITH_DOCTOR,
        help="Plan for these GPUs instead of the local ones, e.g. 4xA100-80GB or 8xH200.",
    )
    # -- the group ----------------------------------------------------------------------------
    nnodes: int | None = option(
        None, "--nnodes", env="KAITO_NNODES", kind="int", concern=Concern.GROUP, commands=_WITH_DOCTOR,
        help="Number of nodes in the group, at most 1024 (default: from the environment, else 1).",
    )
    node_rank: int | None = option(
        None, "--node-rank", env="KAITO_NODE_RANK", kind="int", concern=Concern.GROUP, commands=_WITH_DOCTOR,
        help="This node's rank, 0 = leader (default: from the environment).",
    )
    leader_address: str | None = option(
        None, "--leader-address", env="KAITO_LEADER_ADDRESS", concern=Concern.GROUP, commands=_WITH_DOCTOR,
        help="Address of the rank-0 node for torch.distributed rendezvous (default: from the environment).",
    )
    master_port: int | None = option(
        None, "--master-port", env="KAITO_MASTER_PORT", kind="int", concern=Concern.GROUP, commands=_WITH_DOCTOR,
        help="Rendezvous port on the leader (default 29501).",
    )
    rendezvous_timeout: float | None = option(  # multi-node: how long to wait for the leader
        None, "--rendezvous-timeout", env="KAITO_RENDEZVOUS_TIMEOUT", **numbers.RENDEZVOUS_TIMEOUT.option_bounds(),
        concern=Concern.GROUP,
        help="Multi-node: seconds for the whole group to check in at the leader before giving up (above 0, at most 604800; default 1800).",
    )
    join: bool = option(  # multi-node worker: learn the model and settings from the leader's store
        False, "--join", env="KAITO_JOIN", kind="flag", concern=Concern.GROUP,
        help="Multi-node worker: learn the model, revision, node count and settings from the leader "
        "(needs only the leader's address and this node's rank).",
    )
    peer_timeout: float | None = option(  # a silent peer's heartbeat counts as lost after this
        None, "--peer-timeout", env="KAITO_PEER_TIMEOUT", **numbers.PEER_TIMEOUT.option_bounds(), concern=Concern.GROUP,
        help="Multi-node: seconds without a heartbeat after which a node counts as lost and the group stops (1 to 3600; default 15).",
    )
    max_restarts: int = option(  # restarts a node may spend on failures of its own vLLM
        3, "--max-restarts", env="KAITO_MAX_RESTARTS", kind="int", low=0, high=100, show_default=True, concern=Concern.GROUP,
        help="Multi-node: how often a node whose own vLLM failed (exited or hung) may restart its group in place, "
        "keeping every node's weights (0: a lost member ends the group, exit 22, as before).",
    )
    group_secret_file: str | None = option(  # the group secret's file (KAITO_GROUP_SECRET holds the value itself)
        None, "--group-secret-file", env="KAITO_GROUP_SECRET_FILE", concern=Concern.GROUP,
        help="Multi-node: a file holding the group secret (the same on every node, e.g. a mounted Kubernetes Secret; "
        "or set KAITO_GROUP_SECRET); every message in the group's store is signed with it.",
    )
    # -- the weights --------------------------------------------------------------------------
    weights_dir: Path | None = option(
        None, "--weights-dir", env="KAITO_WEIGHTS_DIR", kind="path", concern=Concern.WEIGHTS, commands=_WITH_DOCTOR,
        help="Where weights are stored (default: /workspace/weights when that folder exists, else "
        "~/.cache/huggingface/kaito-weights).",
    )
    offline: bool = option(
        False, "--offline", env="KAITO_OFFLINE", kind="flag", concern=Concern.WEIGHTS,
        help="Use a complete local copy of the weights; no network (also HF_HUB_OFFLINE=1).",
    )
    token_file: Path | None = option(
        None, "--token-file", env="KAITO_HF_TOKEN_FILE", kind="path", concern=Concern.WEIGHTS,
        help="File holding the Hugging Face token (a mounted secret). Otherwise HF_TOKEN, then the huggingface_hub login.",
    )
    verify_weights: bool = option(  # re-hash a complete local copy before reusing it
        False, "--verify-weights", env="KAITO_VERIFY_WEIGHTS", kind="flag", concern=Concern.WEIGHTS,
        help="Re-hash a complete local copy of the weights before using it (slow for big models; catches bit rot).",
    )
    endpoint: str | None = None  # the hub (HF_ENDPOINT); not an option
    # -- serving ------------------------------------------------------------------------------
    host: str = option(
        "0.0.0.0", "--host", env="KAITO_HOST", show_default=True, concern=Concern.SERVE,
        help="Address vLLM listens on.",
    )
    port: int = option(
        5000, "--port", env="KAITO_PORT", kind="int", low=1, high=65535, show_default=True, concern=Concern.SERVE,
        help="Port vLLM listens on (KAITO pods use 5000).",
    )
    config_file: Path | None = option(
        None, "--config", env="KAITO_CONFIG_FILE", kind="path", concern=Concern.SERVE,
        help="KAITO inference config YAML; its 'vllm:' flags win over the plan.",
    )
    chat_template_dir: str | None = option(
        None, "--chat-template-dir", env="KAITO_CHAT_TEMPLATE_DIR", concern=Concern.SERVE,
        help="Folder of preset chat templates (default /workspace/chat_templates); a template not there comes from the ones kaito-runtime ships, if any.",
    )
    grace_seconds: float = option(
        30.0, "--grace-period", env="KAITO_GRACE_PERIOD", **numbers.GRACE_PERIOD.option_bounds(), show_default=True,
        concern=Concern.SERVE, help="Seconds vLLM gets to stop after SIGTERM before it is killed (0 to 3600).",
    )
    ready_timeout: float | None = option(
        None, "--ready-timeout", env="KAITO_READY_TIMEOUT", **numbers.READY_TIMEOUT.option_bounds(), concern=Concern.SERVE,
        help="Give up if vLLM is not ready after this many seconds (above 0, at most 604800; default: wait).",
    )
    plan_report: Path | None = option(  # JSON-lines file the plan check is appended to
        None, "--plan-report", env="KAITO_PLAN_REPORT", kind="file", concern=Concern.SERVE,
        help="Append the plan check (predicted vs vLLM's own KV and weights figures) to this file as one JSON line.",
    )
    kv_cache_cpu_memory_utilization: float | None = option(
        None, "--kv-cache-cpu-memory-utilization", env="KAITO_KV_CACHE_CPU_MEMORY_UTILIZATION", kind="float",
        low=0, high=1, concern=Concern.SERVE,
        help="GPU target: offload KV blocks to this fraction of the container's free memory (its cgroup limit "
        "minus what is in use), passed as vLLM's KV offloading size; 0 or unset: no offload. KAITO's "
        "inference_api.py defaults it to 0.5, as KAITO does.",
    )
    disable_rate_limit: bool = option(
        False, "--disable-rate-limit", env="KAITO_DISABLE_RATE_LIMIT", kind="flag", concern=Concern.SERVE,
        help="Do not install KAITO's 429 guard (HTTP 429 when the queue is deeper than max-num-seqs) in vLLM.",
    )
    inference_role: str | None = option(
        None, "--inference-role", env="KAITO_INFERENCE_ROLE", kind="choice", choices=("prefill", "decode"),
        concern=Concern.SERVE,
        help="Disaggregated serving: this pod's role; sets KAITO's Nixl KV transfer config unless you give one "
        "(KAITO serves decode on port 5001).",
    )
    # -- the launcher's own HTTP and exit message (kaito_runtime/observe, kaito_runtime/termination)
    metrics_port: int = option(
        5090, "--metrics-port", env="KAITO_METRICS_PORT", kind="int", low=0, high=65535, show_default=True,
        concern=Concern.SERVE,
        help="Port of the launcher's own /metrics, /startupz and /health, served for its whole life (0 turns it off).",
    )
    no_startup_http: bool = option(
        False, "--no-startup-http", env="KAITO_NO_STARTUP_HTTP", kind="flag", concern=Concern.SERVE,
        help="Leave vLLM's port free until vLLM binds it (by default the launcher answers /health 503 with the phase, /startupz and /metrics there until then).",
    )
    termination_log: str | None = option(
        None, "--termination-log", env="KAITO_TERMINATION_LOG", concern=Concern.OUTPUT,
        help="File for the one line saying why kaito-run ended (default: /dev/termination-log when writable; 'none' turns it off).",
    )
    extra_vllm_args: tuple[str, ...] = ()  # the arguments after `--`; not an option
    dry_run: bool = False  # only a plan is wanted (no launch follows): the `plan` command

    def __post_init__(self) -> None:
        check_durations(self)

    @property
    def planning_only(self) -> bool:
        """A plan for hardware that is not (necessarily) this node: a dry run, --sku or --assume-gpus."""
        return self.dry_run or bool(self.sku or self.assume_gpus)


def check_durations(request: RuntimeRequest) -> None:
    """Every duration of ``request`` (whoever built it: the CLI, the Python API, a --join) is a
    finite number within the range its option declares; InputError (exit 2) naming the option
    otherwise."""
    for f in dataclasses.fields(request):
        spec: OptionSpec | None = f.metadata.get("option")
        value = getattr(request, f.name)
        if spec is not None and spec.kind == "seconds" and value is not None:
            allowed = numbers.DurationRange(spec.low or 0.0, spec.high or 0.0, above=spec.low_open)
            twin = f" / {spec.env}" if spec.env else ""
            numbers.seconds(value, allowed, name=spec.flags[0], fix=f"set {spec.flags[0]}{twin} within that range")


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


def weights_dir_of(request: RuntimeRequest, env: Mapping[str, str]) -> Path:
    return request.weights_dir or default_weights_dir(env)


def chat_template_dir_of(request: RuntimeRequest, env: Mapping[str, str]) -> str:
    return request.chat_template_dir or env.get("KAITO_CHAT_TEMPLATE_DIR") or DEFAULT_CHAT_TEMPLATE_DIR


def catalog_dir_of(request: RuntimeRequest, env: Mapping[str, str]) -> Path | None:
    """--catalog-dir, else ``KAITO_CATALOG_DIR``, else None (the built-in presets only)."""
    if request.catalog_dir is not None:
        return request.catalog_dir
    return Path(env["KAITO_CATALOG_DIR"]).expanduser() if env.get("KAITO_CATALOG_DIR") else None


def endpoint_of(request: RuntimeRequest, env: Mapping[str, str]) -> str | None:
    """The hub to use: the request's, else ``HF_ENDPOINT`` (a mirror), else None (the public Hub)."""
    return request.endpoint or env.get("HF_ENDPOINT") or None


def settled(request: RuntimeRequest, env: Mapping[str, str]) -> RuntimeRequest:
    """The request with every default that comes from the environment filled in, read once."""
    return replace(
        request,
        weights_dir=weights_dir_of(request, env),
        chat_template_dir=chat_template_dir_of(request, env),
        endpoint=endpoint_of(request, env),
        catalog_dir=catalog_dir_of(request, env),
    )


def is_offline(request: RuntimeRequest, env: Mapping[str, str]) -> bool:
    return request.offline or offline_in(env)


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or Path(text).expanduser().exists()


def uses_local_folder(request: RuntimeRequest) -> bool:
    """The model is a folder on disk: the weights folder is never touched."""
    return bool(request.model and not request.preset and looks_like_path(request.model))


def check_join(request: RuntimeRequest) -> None:
    """A --join worker names no model of its own: it learns the model and its settings from the leader."""
    if request.preset or request.model or request.extra_vllm_args or request.config_file:
        raise InputError("--join learns the model and its settings from the leader, but this node was given its own",
                         fix="drop --preset/--model/--config and the arguments after -- on a --join worker, or drop --join")


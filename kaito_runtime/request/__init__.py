"""RuntimeRequest: what the user asked for (flags and environment), and the defaults read from
the environment around it. Values and pure look-ups only; nothing here touches the network."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from kaito_runtime.types import PlanOverrides

CONTAINER_WEIGHTS_DIR = Path("/workspace/weights")
DEFAULT_CHAT_TEMPLATE_DIR = "/workspace/chat_templates"


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUTHY = ("1", "true", "yes", "on")


def offline_in(env: Mapping[str, str]) -> bool:
    """Whether ``env`` asks for no Hub access (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` truthy).

    The one rule for reading those variables; pass the environment the caller was given."""
    return any(env.get(name, "").strip().lower() in _TRUTHY for name in OFFLINE_ENV)


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
    adapters_dir: Path | None = None  # LoRA adapters, one sub-folder each (KAITO: /mnt/adapter)
    chat_template_dir: str | None = None
    grace_seconds: float = 30.0
    ready_timeout: float | None = None
    plan_report: Path | None = None  # JSON-lines file the plan check is appended to
    rendezvous_timeout: float | None = None  # multi-node: how long to wait for the leader
    peer_timeout: float | None = None  # multi-node: a silent peer's heartbeat counts as lost after this
    join: bool = False  # multi-node worker: learn the model and settings from the leader's store
    dry_run: bool = False  # only a plan is wanted (no launch follows)
    verify_weights: bool = False  # re-hash a complete local copy before reusing it
    catalog_dir: Path | None = None  # a platform team's presets beside the built-in ones
    metrics_port: int = 5090  # the launcher's own /metrics, /startupz, /health for its whole life (0: off)
    startup_http: bool = True  # answer /health (503), /startupz, /metrics on vLLM's port until vLLM takes it

    @property
    def planning_only(self) -> bool:
        """A plan for hardware that is not (necessarily) this node: a dry run, --sku or --assume-gpus."""
        return self.dry_run or bool(self.sku or self.assume_gpus)


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

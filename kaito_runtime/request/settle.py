"""The request settled: every default the environment gives read once, the token resolved once,
the config file read once, the user's vLLM arguments parsed once, and each step's slice cut.

``settle_request(request, env)`` is called once per run (by ``api.settle``, which adds the preset
catalog and the model check); every later step takes the slice it needs from the
``LaunchRequest`` and never looks at the raw request or the environment's defaults again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaito_runtime.request import (
    RuntimeRequest,
    catalog_dir_of,
    chat_template_dir_of,
    check_join,
    endpoint_of,
    is_offline,
    looks_like_path,
    weights_dir_of,
)
from kaito_runtime.numbers import WEIGHTS_LOCK_TIMEOUT, parse_int
from kaito_runtime.secrets import Credentials, resolve_credentials
from kaito_runtime.settings import seconds_from_env
from kaito_runtime.types import PlanOverrides
from kaito_runtime.vllm_flags import UserArgs, parse_user_args

if TYPE_CHECKING:
    from kaito_runtime.request.config_file import ConfigFile

log = logging.getLogger("kaito_runtime")

LOCK_TIMEOUT_ENV = "KAITO_WEIGHTS_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_S = 3600.0  # seconds without progress from another launcher's download


@dataclass(frozen=True)
class ModelRequest:
    """What names the model: the model step's slice. ``preset`` or ``model`` (a repo id or a
    folder), as the user gave them until ``model.checked`` normalises them."""

    preset: str | None = None
    model: str | None = None
    revision: str | None = None
    served_model_name: str | None = None
    catalog_dir: Path | None = None
    endpoint: str | None = None  # the hub (HF_ENDPOINT), None for the public Hub
    offline: bool = False  # --offline or HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
    remote_code: bool = False  # --trust-remote-code among the user's vLLM arguments
    adapters_dir: Path | None = None

    @property
    def local_folder(self) -> bool:
        """The model is a folder on disk: the weights folder is never touched."""
        return bool(self.model and not self.preset and looks_like_path(self.model))


@dataclass(frozen=True)
class NodeRequest:
    """Which node to plan for: this one, a cloud SKU or assumed GPUs."""

    sku: str | None = None
    assume_gpus: str | None = None

    @property
    def described(self) -> bool:
        return bool(self.sku or self.assume_gpus)


@dataclass(frozen=True)
class GroupRequest:
    """This node's place in a multi-node group, as asked (the environment fills the rest)."""

    nnodes: int | None = None
    node_rank: int | None = None
    leader_address: str | None = None
    master_port: int | None = None
    rendezvous_timeout: float | None = None
    peer_timeout: float | None = None
    join: bool = False
    secret_file: str | None = None  # the group secret's file (KAITO_GROUP_SECRET holds the value)
    max_restarts: int = 0  # restarts this node may spend on failures of its own vLLM


@dataclass(frozen=True)
class WeightsRequest:
    """The weights step's slice: where the copies live and how to fetch them."""

    weights_dir: Path
    offline: bool = False
    endpoint: str | None = None
    verify: bool = False
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S


@dataclass(frozen=True)
class ServeRequest:
    """What the user asked of the server and of the supervision around it."""

    host: str = "0.0.0.0"
    port: int = 5000
    chat_template_dir: str = ""
    grace_seconds: float = 30.0
    ready_timeout: float | None = None  # None: wait for as long as vLLM takes
    plan_report: Path | None = None
    metrics_port: int = 5090  # the launcher's own /metrics, /startupz, /health (0: none)
    startup_http: bool = True  # the launcher answers on vLLM's port until vLLM binds it
    # KAITO's serving features: CPU KV offload (the config file's top-level key wins over the
    # option), the 429 guard, the prefill/decode role
    kv_cache_cpu_memory_utilization: float | None = None
    rate_limit: bool = True
    inference_role: str | None = None


@dataclass(frozen=True)
class LaunchRequest:
    """A request with nothing left to look up: each step takes its slice."""

    model: ModelRequest
    node: NodeRequest
    group: GroupRequest
    weights: WeightsRequest
    serve: ServeRequest
    overrides: PlanOverrides  # the plan options, with the sizes the user's vLLM flags set
    user_args: UserArgs
    credentials: Credentials = field(repr=False)
    env: Mapping[str, str] = field(repr=False)  # the environment the run was settled in, read-only
    dry_run: bool = False  # only a plan is wanted
    config_file: Path | None = None  # named in messages
    catalog: Any = field(default=None, repr=False)  # model.catalog.Catalog, loaded once by api.settle
    local_copies: Any = field(default=None, repr=False)  # weights.LocalCopies under weights_dir, made by api.settle

    @property
    def api_address(self) -> tuple[str, int]:
        """Where vLLM's API will listen: the pass-through --host/--port win over the options."""
        return (self.user_args.last_value("host") or self.serve.host,
                parse_int(self.user_args.last_value("port") or "") or self.serve.port)

    @property
    def planning_only(self) -> bool:
        """A plan for hardware that is not (necessarily) this node: a dry run, --sku or --assume-gpus."""
        return self.dry_run or self.node.described

    def joined(self, leader) -> LaunchRequest:
        """A --join worker's launch once its leader has said what the group serves (``leader``:
        launch.group's ``Published``): the leader's model, node count, plan options and vLLM
        arguments (parsed here, once); this node keeps its rank, ports, cores, folders and token."""
        user_args = parse_user_args(None, leader.vllm_args, config_path=None)
        model = replace(self.model, preset=leader.preset, model=leader.model, revision=leader.revision,
                        served_model_name=leader.served_model_name, remote_code=user_args.remote_code)
        group = replace(self.group, nnodes=leader.nnodes, leader_address=leader.leader_address,
                        master_port=leader.master_port)
        overrides = user_args.sized(replace(leader.overrides, cpu_cores=self.overrides.cpu_cores))
        return replace(self, model=model, group=group, overrides=overrides, user_args=user_args)


def settle_request(request: RuntimeRequest, env: Mapping[str, str]) -> LaunchRequest:
    """``request`` in ``env``, settled (see the module docstring). Raises InputError for a bad
    value in the config file or the pass-through arguments, ConfigFileError for a bad file."""
    if request.join:
        check_join(request)
    config = _read_config(request.config_file)
    # The environment's defaults first, then the user's vLLM arguments (they size the plan and say
    # whether the repo's own code may run), then the token.
    offline, endpoint, catalog_dir = is_offline(request, env), endpoint_of(request, env), catalog_dir_of(request, env)
    weights_dir, chat_template_dir = weights_dir_of(request, env), chat_template_dir_of(request, env)
    kv_offload = _kv_offload(request, config)
    lock_timeout_s = seconds_from_env(env, LOCK_TIMEOUT_ENV, DEFAULT_LOCK_TIMEOUT_S, WEIGHTS_LOCK_TIMEOUT)
    user_args = parse_user_args(config.vllm_args if config is not None else None, request.extra_vllm_args,
                                config_path=request.config_file)
    return LaunchRequest(
        model=ModelRequest(
            preset=request.preset, model=request.model, revision=request.revision,
            served_model_name=request.served_model_name, catalog_dir=catalog_dir,
            endpoint=endpoint, offline=offline, remote_code=user_args.remote_code, adapters_dir=request.adapters_dir,
        ),
        node=NodeRequest(request.sku, request.assume_gpus),
        group=GroupRequest(
            request.nnodes, request.node_rank, request.leader_address, request.master_port,
            request.rendezvous_timeout, request.peer_timeout, request.join, request.group_secret_file,
            request.max_restarts,
        ),
        weights=WeightsRequest(weights_dir=weights_dir, offline=offline, endpoint=endpoint,
                               verify=request.verify_weights, lock_timeout_s=lock_timeout_s),
        serve=ServeRequest(
            request.host, request.port, chat_template_dir, request.grace_seconds,
            request.ready_timeout, request.plan_report, request.metrics_port, not request.no_startup_http,
            kv_offload, not request.disable_rate_limit, request.inference_role,
        ),
        overrides=user_args.sized(request.overrides),
        user_args=user_args,
        credentials=resolve_credentials(env, request.token_file),
        env=dict(env),
        dry_run=request.dry_run,
        config_file=request.config_file,
    )


def _read_config(path: Path | None) -> ConfigFile | None:
    """The config file, read once; its notes and the one warning about unknown top-level keys
    are logged here, once."""
    if path is None:
        return None
    from kaito_runtime.request.config_file import read_config

    config = read_config(path)
    for note in config.notes:
        log.info("%s", note)
    if config.unknown_keys_warning:
        log.warning("%s: %s", path, config.unknown_keys_warning)
    return config


def _kv_offload(request: RuntimeRequest, config: ConfigFile | None) -> float | None:
    """The CPU KV offload fraction: the config file's top-level key wins over the option, as
    KAITO's file wins over its command line."""
    wanted = config.kv_cache_cpu_memory_utilization if config is not None else None
    if wanted is None or wanted == request.kv_cache_cpu_memory_utilization:
        return request.kv_cache_cpu_memory_utilization
    if request.kv_cache_cpu_memory_utilization is not None:
        log.info("%s: kv_cache_cpu_memory_utilization %g replaces --kv-cache-cpu-memory-utilization %g",
                 request.config_file, wanted, request.kv_cache_cpu_memory_utilization)
    return wanted

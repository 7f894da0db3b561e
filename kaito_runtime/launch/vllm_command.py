"""LaunchPlan -> the vLLM argv and environment. Pure: no processes, no file writes.

Flags come from the plan first, then the model's own ``vllm_args``, then the user's KAITO config
file ``vllm:`` section, then the arguments after ``--``. A later layer WINS: the earlier
occurrence of the same flag is removed (so vLLM never sees two), and a user value that
contradicts the fit check is kept but warned about with the numbers (presets.md mistake #12);
a config-file value the pass-through replaces is not warned about, since vLLM never gets it.
``build_vllm_command(plan, CommandInputs(...))`` is the entry; its steps are the helpers below it.
On the CPU target, ``cpu_layout`` fits the process layout to the rank count the merged flags ask for.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from kaito_runtime.launch.cpu_ranks import CpuLayout, layout_cpu
from kaito_runtime.launch.kaito_serving import (
    RATE_LIMIT_MIDDLEWARE,
    RATE_LIMIT_THRESHOLD_ENV,
    KaitoServing,
    KvOffload,
    kv_offload,
    role_transfer_config,
    shutdown_timeout_for,
)
from kaito_runtime.secrets import GROUP_SECRET_ENV, GROUP_SECRET_FILE_ENV
from kaito_runtime.settings import shipped_chat_templates_dir
from kaito_runtime.vllm_flags import (
    CONFIG_FILE,
    PASS_THROUGH,
    PLAN,
    FlagArg,
    UserArgs,
    config_value,
    group,
    is_flag,
    last_arg,
    last_float,
    last_int,
    last_value,
    merge as _merge,
    normalise_flag,
    parse_human_int,
    parse_user_args,
)
from kaito_runtime.plan.memory import gib
from kaito_runtime.types import GiB, LaunchPlan, LoraAdapter
from kaito_runtime.plan.vllm_rules import CONTEXT_ALIGN, align_down, tp_rule_violation

# vLLM reads the Hub token from these; it runs offline on a local folder and must never see one.
# KAITO_HF_TOKEN_FILE is our own token source: vLLM needs none, so it does not learn where one is.
# A sitecustomize.py that lets each vLLM CPU process use Intel AMX (see its docstring).
AMX_SITE_DIR = Path(__file__).resolve().parent / "amx_site"

TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "KAITO_HF_TOKEN_FILE")
# What vLLM's environment never holds: the token variables and the group's secret (its store is
# the launcher's; vLLM has no use for it).
SECRET_ENV_VARS = (*TOKEN_ENV_VARS, GROUP_SECRET_ENV, GROUP_SECRET_FILE_ENV)

# Where a flag's final value came from (``VllmLaunch.sources``); a later layer wins.
PRESET_ARGS = "the preset's vLLM args"
ADAPTERS = "the adapters folder"
ENVIRONMENT = "environment"  # (CONFIG_FILE and PASS_THROUGH, the user's layers: vllm_flags)

# vLLM reads the API key from this variable when no --api-key is given (envs.py, vLLM 0.32).
API_KEY_ENV = "VLLM_API_KEY"
# The pseudo-flag under which ``VllmLaunch.sources`` records who chose the CPU KV space.
CPU_KV = "cpu-kv-cache"

_MODULE_ENTRY = "vllm.entrypoints.openai.api_server"

# The ranks --max-lora-rank accepts (vLLM 0.32 vllm/config/lora.py MaxLoRARanks).
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass(frozen=True)
class VllmLaunch:
    """What to start: argv, the variables to set and to remove, and warnings for the user.

    The fields after ``warnings`` are what vLLM will actually use, read from the merged argv
    (plan, model, config file, pass-through): readiness checks poll ``host``/``port``/
    ``served_model_names`` with ``api_key``; failure hints quote the parallel sizes, utilization
    and context.
    ``api_key``: the key vLLM guards /v1/* with (``--api-key``, else ``VLLM_API_KEY`` in the
    inherited environment); a secret, kept out of repr and masked by ``format_command``. A single
    ``--api-key`` is moved out of ``argv`` into ``env["VLLM_API_KEY"]`` (argv is public on a node).
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = SECRET_ENV_VARS
    warnings: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = 5000
    served_model_names: tuple[str, ...] = ()
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None  # None: vLLM's "auto" (or its default)
    api_key: str | None = field(default=None, repr=False)
    # CPU target: the KV space each rank allocates, in GiB (VLLM_CPU_KVCACHE_SPACE, an exported
    # one, or --kv-cache-memory-bytes), and the ranks on this node. None on the GPU target.
    cpu_kv_cache_gib: float | None = None
    cpu_ranks: int = 1
    # flag name -> the layer that set its final value (PLAN, PRESET_ARGS, CONFIG_FILE,
    # PASS_THROUGH; ENVIRONMENT for CPU_KV). A flag the config file switched off maps to CONFIG_FILE.
    sources: Mapping[str, str] = field(default_factory=dict)
    model_at: int = 2  # where the model folder is in argv (see ``filled``)
    # KAITO's serving features (CommandInputs.kaito): the CPU KV offload decision, whether the
    # 429 guard is installed, and the drain vLLM gets on SIGTERM (None: vLLM's default, abort).
    kv_offload: KvOffload | None = None
    rate_limit: bool = False
    shutdown_timeout: int | None = None

    def __repr__(self) -> str:  # argv and env as display_argv/display_env show them: no API key
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr and f.name not in ("argv", "env")
        )
        return f"VllmLaunch(argv={display_argv(self)!r}, env={display_env(self.env)!r}, {shown})"

    @property
    def served_model_name(self) -> str:
        """The first served name (the one clients are told about)."""
        return self.served_model_names[0] if self.served_model_names else ""


    def filled(self, model_path: str, *, master_addr: str | None = None) -> VllmLaunch:
        """This launch for the folder the weights step returned (a branch may resolve to another
        commit's folder) and, on several nodes, the leader's address as the group resolved it:
        the command is built once, before the weights, and only these are filled in after."""
        argv = list(self.argv)
        argv[self.model_at] = model_path
        if master_addr is not None and self.sources.get("master-addr") == PLAN:
            at = argv.index("--master-addr")
            argv[at + 1] = master_addr
        return replace(self, argv=tuple(argv))


# ------------------------------------------------------------------------------------------------
# The plan's own flags
# ------------------------------------------------------------------------------------------------


def _plan_tokens(plan: LaunchPlan, host: str, port: int, auto_supported: bool) -> tuple[list[str], list[str]]:
    """The plan's own flags, and the warnings about them."""
    t: list[str] = [
        "--served-model-name", plan.model.name,
        "--host", host,
        "--port", str(port),
        "--tensor-parallel-size", str(plan.tensor_parallel_size),
    ]
    if plan.pipeline_parallel_size > 1:
        t += ["--pipeline-parallel-size", str(plan.pipeline_parallel_size)]
    if plan.data_parallel_size > 1:
        t += ["--data-parallel-size", str(plan.data_parallel_size)]
    if plan.target == "gpu" and plan.gpu_memory_utilization is not None:
        t += ["--gpu-memory-utilization", f"{plan.gpu_memory_utilization:.2f}"]
    length, warnings = _max_model_len_value(plan, auto_supported)
    if length is not None:
        t += ["--max-model-len", length]
    if plan.kv_cache_dtype:
        t += ["--kv-cache-dtype", plan.kv_cache_dtype]
    if plan.enforce_eager:
        t.append("--enforce-eager")
    topo = plan.topology
    if topo.multi_node:
        # vLLM's multi-node without Ray (mp backend): same command everywhere except the rank,
        # and no API server on the workers (vllm.md "Multi-node without Ray").
        t += [
            "--distributed-executor-backend", "mp",
            "--nnodes", str(topo.nnodes),
            "--node-rank", str(topo.node_rank),
            "--master-addr", str(topo.leader_address),
            "--master-port", str(topo.master_port),
        ]
        if not topo.is_leader:
            t.append("--headless")
    elif plan.target == "cpu" and plan.world_size == 1:
        # One process, engine in the API server: fastest CPU start (vllm-cpu.md: 24 s vs 44 s).
        t += ["--distributed-executor-backend", "uni"]
    return t, warnings


def _max_model_len_value(plan: LaunchPlan, auto_supported: bool) -> tuple[str | None, list[str]]:
    if not plan.max_model_len_auto:
        return (str(plan.max_model_len) if plan.max_model_len else None), []
    if auto_supported:
        return "auto", []
    if plan.context_limit or plan.kv_cache_tokens:
        estimate = plan.context_limit or min(plan.model.max_context, align_down(plan.kv_cache_tokens or 0, CONTEXT_ALIGN))
        return str(estimate), [
            f"this vLLM has no '--max-model-len auto'; passing the planner's estimate {estimate} "
            "(if vLLM reports too little KV cache, lower it with --max-model-len)"
        ]
    return None, []


def lora_tokens(adapters: Sequence[LoraAdapter]) -> tuple[list[str], list[str]]:
    """``--enable-lora --lora-modules name=path ... --max-lora-rank R`` for ``adapters`` (none: no
    flags). R is the smallest rank vLLM accepts that holds the largest adapter's rank. A name or
    path that ``name=path`` cannot carry (an '=' in the name, a ',' anywhere) goes as JSON, and
    so does a name vLLM's parser would read as an option (``--api-key``, ``-tp``): a JSON token
    starts with '{', so it stays a value of --lora-modules (see model.adapters.option_like).
    Returns the tokens and the warnings."""
    if not adapters:
        return [], []
    modules = []
    for a in adapters:
        if a.name.startswith("-") or "=" in a.name or "," in a.name or "," in a.path:
            modules.append(json.dumps({"name": a.name, "path": a.path}, separators=(",", ":")))
        else:
            modules.append(f"{a.name}={a.path}")
    largest = max(a.rank for a in adapters)
    rank = next((r for r in MAX_LORA_RANKS if r >= largest), None)
    warnings = []
    if rank is None:
        rank = MAX_LORA_RANKS[-1]
        warnings.append(f"LoRA rank {largest} is above the largest rank vLLM serves ({rank}); vLLM will refuse the adapter")
    return ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(rank)], warnings


# ------------------------------------------------------------------------------------------------
# Warnings for user values that contradict the fit check
# ------------------------------------------------------------------------------------------------


def _contradictions(plan: LaunchPlan, user: Sequence[FlagArg]) -> list[str]:
    warnings: list[str] = []
    model = plan.model
    for arg in user:
        value = arg.values[0] if arg.values else ""
        if arg.name == "max-model-len":
            wanted = parse_human_int(value)
            if wanted is None:
                continue
            if wanted > model.max_context:
                warnings.append(
                    f"--max-model-len {wanted} is longer than {model.name}'s context {model.max_context}; vLLM will refuse it"
                )
            elif plan.context_limit is not None and wanted > plan.context_limit:
                kv = f", {gib(max(0, plan.memory.kv_cache))} of KV per GPU" if plan.memory else ""
                warnings.append(
                    f"--max-model-len {wanted} is more than the planner estimates fits "
                    f"(vLLM's budget predicts at most {plan.context_limit:,} tokens{kv}); "
                    f"expect vLLM to fail at start-up; fits with --max-model-len <= {plan.context_limit}"
                )
            elif plan.context_limit is None and plan.kv_cache_tokens is not None and wanted > plan.kv_cache_tokens:
                fits = min(model.max_context, align_down(plan.kv_cache_tokens, CONTEXT_ALIGN))
                kv = ""
                if plan.memory:
                    kv = (f": it needs {gib(wanted * plan.memory.kv_bytes_per_token)} of KV per GPU, "
                          f"only {gib(max(0, plan.memory.kv_cache))} left")
                warnings.append(
                    f"--max-model-len {wanted} is more than the planner estimates fits ({plan.kv_cache_tokens:,} tokens){kv}; "
                    f"expect vLLM to fail at start-up; fits with --max-model-len <= {fits}"
                )
        elif arg.name == "gpu-memory-utilization" and plan.memory is not None:
            try:
                wanted_u = float(value)
            except ValueError:
                continue
            free_u = plan.memory.free / plan.memory.total
            if wanted_u > free_u:
                warnings.append(
                    f"--gpu-memory-utilization {wanted_u} needs {gib(plan.memory.total * wanted_u)} per GPU but only "
                    f"{gib(plan.memory.free)} of {gib(plan.memory.total)} is free; vLLM will refuse to start "
                    f"(planned {plan.gpu_memory_utilization})"
                )
            elif plan.memory.total * wanted_u < plan.memory.weights + plan.memory.overhead:
                warnings.append(
                    f"--gpu-memory-utilization {wanted_u} gives {gib(plan.memory.total * wanted_u)} per GPU, less than the "
                    f"{gib(plan.memory.weights + plan.memory.overhead)} the weights and runtime need"
                )
        elif arg.name in ("tensor-parallel-size", "pipeline-parallel-size"):
            number = parse_human_int(value)
            if number is None:
                continue
            tp = number if arg.name == "tensor-parallel-size" else last_int(user, "tensor-parallel-size", plan.tensor_parallel_size)
            pp = number if arg.name == "pipeline-parallel-size" else last_int(user, "pipeline-parallel-size", plan.pipeline_parallel_size)
            if arg.name == "tensor-parallel-size":
                rule = tp_rule_violation(model, tp)
                if rule:
                    warnings.append(f"--tensor-parallel-size {tp}: {rule}; vLLM will refuse it")
            if plan.gpus_per_node:
                group = plan.gpus_per_node * plan.topology.nnodes
                if tp * pp > group:
                    warnings.append(
                        f"TP {tp} x PP {pp} = {tp * pp} GPUs, but the group has {group} "
                        f"({plan.topology.nnodes} node(s) x {plan.gpus_per_node})"
                    )
                elif plan.topology.multi_node and tp * pp != group:
                    warnings.append(f"TP {tp} x PP {pp} = {tp * pp} does not match the group's {group} GPUs")
    return warnings


def _effective_endpoint(
    args: Sequence[FlagArg], inputs: CommandInputs
) -> tuple[tuple[str, int, tuple[str, ...]], list[str]]:
    """Host, port and served names vLLM will use, read from the merged arguments; the warnings."""
    warnings: list[str] = []
    host = last_value(args, "host") or inputs.host
    port = inputs.port
    port_text = last_value(args, "port")
    if port_text is not None:
        try:
            port = int(port_text)
        except ValueError:
            warnings.append(f"--port {port_text!r} is not a number; vLLM will refuse it")
    served = last_arg(args, "served-model-name")
    # vLLM's default: the model argument
    return (host, port, served.values if served is not None else (inputs.model_path,)), warnings


def _effective_max_model_len(args: Sequence[FlagArg]) -> int | None:
    """The context vLLM is told: a number, or None for 'auto' / no flag at all."""
    value = last_value(args, "max-model-len")
    return None if value is None else parse_human_int(value)


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def _model_as_flag(entrypoint: Sequence[str]) -> bool:
    """The module entry (python -m vllm.entrypoints.openai.api_server) takes --model PATH."""
    return any(part == _MODULE_ENTRY or part.endswith("api_server.py") for part in entrypoint)


def _env(
    base_env: Mapping[str, str],
    user_flags: set[str | None],
    cpu: CpuLayout | None,
    *,
    eager: bool,
) -> tuple[dict[str, str], list[str]]:
    """The variables we set for vLLM, and the warnings about the ones the user exported.
    ``eager``: the final command has --enforce-eager."""
    warnings: list[str] = []
    env = {
        "HF_HUB_OFFLINE": "1",  # vLLM loads the local folder; zero Hub calls
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
    }
    wanted: dict[str, str] = {}
    if cpu is not None:
        # The CPU backend lets VLLM_CPU_KVCACHE_SPACE override --kv-cache-memory-bytes
        # (vllm/platforms/cpu.py), so a user's flag only wins if we leave the variable unset.
        if "kv-cache-memory-bytes" not in user_flags:
            wanted["VLLM_CPU_KVCACHE_SPACE"] = str(cpu.kv_cache_gib)  # per rank
        elif base_env.get("VLLM_CPU_KVCACHE_SPACE"):
            warnings.append(
                "VLLM_CPU_KVCACHE_SPACE is set in the environment and overrides --kv-cache-memory-bytes on the CPU backend"
            )
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = cpu.threads_bind
        if cpu.single_process:
            wanted["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if eager:
            # Eager still compiles a few helpers at their first call (the sampler's top-k/top-p
            # and logprobs, the vocabulary mask of TP > 1): 3 s of the first such request on a
            # 2-core machine with a warm inductor cache, 8 s cold, in each start. torch's switch
            # makes them plain functions; vLLM reads it as -cc.mode=none, which eager is anyway.
            wanted["TORCH_COMPILE_DISABLE"] = "1"
        if platform.machine() in ("x86_64", "AMD64"):
            # amx_site/sitecustomize.py asks Linux for AMX permission in each vLLM process.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(AMX_SITE_DIR), base_env.get("PYTHONPATH"))))
    for key, value in wanted.items():
        if key not in base_env:  # a value the user exported wins
            env[key] = value
    return env, warnings


@dataclass(frozen=True)
class CommandInputs:
    """Everything the vLLM command is built from besides the plan.

    ``model_path``: the weights folder vLLM loads. ``entrypoint``: the installed vLLM's argv
    prefix; ``model_as_flag`` None decides from it (module entry -> ``--model PATH``).
    ``host``/``port``: where the user asked vLLM to listen. ``config_args``: the KAITO config
    file's ``vllm:`` section; ``extra_args``: the arguments after ``--`` (both win over the plan,
    the pass-through over the file). ``chat_template_dir``: where the preset's chat template is.
    ``base_env``: the environment the child inherits; variables the user set there win over ours.
    ``max_model_len_auto_supported``: this vLLM takes ``--max-model-len auto``.
    ``cpu_ids``: the cores vLLM may use on the CPU target (default: this process's affinity);
    used only when the merged arguments ask for more than one CPU rank.
    ``ram_available_bytes``: the node's free RAM; a user's CPU KV size larger than it is warned about.
    ``adapters``: LoRA adapters checked by the model step; their flags come after the preset's
    and before the user's (a user's --max-lora-rank wins).
    ``kaito``: KAITO's serving features (offload, 429 guard, drain, role; launch/kaito_serving.py),
    added after the merge and never over a flag the user gave.
    The user's arguments and the environment may hold secrets: they are left out of the repr.
    """

    model_path: str
    entrypoint: tuple[str, ...] = ("vllm", "serve")
    model_as_flag: bool | None = None
    host: str = "0.0.0.0"
    port: int = 5000
    # The user's vLLM arguments, parsed once by the caller (``vllm_flags.parse_user_args``);
    # standalone use may give the raw layers instead (extra_args: after `--`; config_args: the
    # config file's `vllm:` section), parsed here without the value check.
    user: UserArgs | None = field(default=None, repr=False)
    extra_args: tuple[str, ...] = field(default=(), repr=False)
    config_args: Mapping[str, object] | None = field(default=None, repr=False)
    chat_template_dir: str | None = None
    base_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    max_model_len_auto_supported: bool = True
    cpu_ids: tuple[int, ...] | None = None
    ram_available_bytes: int | None = None
    adapters: tuple[LoraAdapter, ...] = ()
    kaito: KaitoServing | None = None  # KAITO's serving features; None: none of them

    def __post_init__(self) -> None:  # callers hand lists, ranges and None: the value holds tuples
        for name in ("entrypoint", "extra_args", "adapters"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.cpu_ids is not None:
            object.__setattr__(self, "cpu_ids", tuple(self.cpu_ids))
        object.__setattr__(self, "base_env", self.base_env or {})
        if self.user is None:
            object.__setattr__(self, "user", parse_user_args(self.config_args, self.extra_args, check=False))

    @property
    def head(self) -> list[str]:
        """The entry point and the model folder (positional, or ``--model PATH``)."""
        as_flag = _model_as_flag(self.entrypoint) if self.model_as_flag is None else self.model_as_flag
        return [*self.entrypoint, *(("--model", self.model_path) if as_flag else (self.model_path,))]


def build_vllm_command(plan: LaunchPlan, inputs: CommandInputs) -> VllmLaunch:
    """The vLLM command for ``plan`` serving the weights in ``inputs.model_path``, in steps: the
    plan's flags (then the preset's and the adapters'), the user's layers, the chat template, the
    merge, the CPU process layout, the KV space and the environment.

    Multi-node: this node's address (VLLM_HOST_IP) and socket variables are not set here but by
    ``rendezvous.RendezvousInfo.child_env``, their one owner. An --api-key goes to the child as
    VLLM_API_KEY, not on the command line.
    """
    args, planned_warnings = _planned_args(plan, inputs)
    user, dropped, user_warnings = _user_args(inputs)
    args, template_warnings = _with_chat_template(args, plan, user, inputs.chat_template_dir)
    args = _merge(_merge(args, [], dropped), user)
    tp, pp, dp = _parallel_sizes(args, plan)
    args, cpu, cpu_warnings = _cpu_processes(plan, inputs, args, user, (tp, pp, dp))
    args, kaito_env, features = _kaito_features(plan, inputs.kaito, args, user)
    (host, port, names), endpoint_warnings = _effective_endpoint(args, inputs)
    sources = _sources(args, dropped)
    kv_gib, kv_warnings = _cpu_kv_space(plan, inputs, args, cpu, sources)
    env, env_warnings = _env(inputs.base_env, {a.name for a in user}, cpu, eager=any(a.name == "enforce-eager" for a in args))
    env.update(kaito_env)
    args, api_key, key_warnings = _api_key_to_env(args, inputs.base_env, env)
    # Each step returns its own warnings; the launch carries them, in the order of the steps.
    warnings = [*planned_warnings, *user_warnings, *template_warnings, *_contradictions(plan, user), *cpu_warnings,
                *endpoint_warnings, *kv_warnings, *env_warnings, *key_warnings]
    head = inputs.head
    return VllmLaunch(
        argv=tuple(head + [token for arg in args for token in arg.tokens]), model_at=len(head) - 1,
        env=env, unset_env=SECRET_ENV_VARS, warnings=tuple(warnings),
        host=host, port=port, served_model_names=names,
        tensor_parallel_size=tp, pipeline_parallel_size=pp, data_parallel_size=dp,
        gpu_memory_utilization=last_float(args, "gpu-memory-utilization", plan.gpu_memory_utilization),
        max_model_len=_effective_max_model_len(args), api_key=api_key,
        cpu_kv_cache_gib=kv_gib, cpu_ranks=cpu.ranks if cpu is not None else 1, sources=sources,
        **features,
    )


def _kaito_features(
    plan: LaunchPlan, kaito: KaitoServing | None, args: list[FlagArg], user: Sequence[FlagArg]
) -> tuple[list[FlagArg], dict[str, str], dict[str, object]]:
    """KAITO's serving features as flags appended after the merge (none replaces a user's flag),
    the variables they need, and what the launch records about them."""
    if kaito is None:
        return args, {}, {}
    given = {a.name for a in user if a.name}
    merged = {a.name for a in args if a.name}
    added: list[FlagArg] = []
    env: dict[str, str] = {}
    offload = kv_offload(plan, kaito, given)
    if offload.size_gib is not None:
        added.append(FlagArg("kv-offloading-size", ("--kv-offloading-size", f"{offload.size_gib:g}")))
    transfer = role_transfer_config(kaito.inference_role, given)
    if transfer is not None:
        added.append(FlagArg("kv-transfer-config", ("--kv-transfer-config", transfer)))
    timeout: int | None = None
    if "shutdown-timeout" in merged:
        timeout = parse_human_int(last_value(args, "shutdown-timeout") or "")
    elif kaito.grace_seconds is not None:
        timeout = shutdown_timeout_for(kaito.grace_seconds)
        added.append(FlagArg("shutdown-timeout", ("--shutdown-timeout", str(timeout))))
    if kaito.rate_limit:
        # vLLM's --middleware is repeatable: ours goes beside any of the user's.
        added.append(FlagArg("middleware", ("--middleware", RATE_LIMIT_MIDDLEWARE)))
        seqs = parse_human_int(last_value(args, "max-num-seqs") or "")
        if seqs:
            env[RATE_LIMIT_THRESHOLD_ENV] = str(seqs)
    features = {"kv_offload": offload, "rate_limit": kaito.rate_limit, "shutdown_timeout": timeout}
    return [*args, *added], env, features


def _planned_args(plan: LaunchPlan, inputs: CommandInputs) -> tuple[list[FlagArg], list[str]]:
    """The plan's own flags, then the preset's ``vllm_args`` and the adapters' flags (a later one
    wins), and the warnings about them."""
    tokens, warnings = _plan_tokens(plan, inputs.host, inputs.port, inputs.max_model_len_auto_supported)
    args = _merge(group(tokens), group(plan.model.vllm_args, PRESET_ARGS))
    args = _merge(args, group(streamer_tokens(plan), PRESET_ARGS))
    lora, lora_warnings = lora_tokens(inputs.adapters)
    return _merge(args, group(lora, ADAPTERS)), warnings + lora_warnings


def streamer_tokens(plan: LaunchPlan) -> list[str]:
    """A model in an object store is streamed by vLLM's Run:ai streamer; with tensor parallelism
    each rank streams its share ({"distributed": true}, as KAITO sets it)."""
    if not plan.model.store_uri:
        return []
    tokens = ["--load-format", "runai_streamer"]
    if plan.tensor_parallel_size > 1:
        tokens += ["--model-loader-extra-config", '{"distributed": true}']
    return tokens


def _user_args(inputs: CommandInputs) -> tuple[list[FlagArg], list[str], list[str]]:
    """The user's arguments as parsed once (config file, then pass-through, merged, no secrets),
    the flags the config file switches off, and what the parse dropped (a warning each)."""
    assert inputs.user is not None
    return list(inputs.user.args), list(inputs.user.switched_off), list(inputs.user.warnings)


def _with_chat_template(
    args: list[FlagArg], plan: LaunchPlan, user: Sequence[FlagArg], folder: str | None
) -> tuple[list[FlagArg], list[str]]:
    """The preset's chat template from ``folder`` (KAITO's, or the user's), else from the templates
    kaito-runtime ships, unless the user gives one. A template in neither is warned about; the
    tokenizer's own template is used then."""
    template = plan.model.chat_template
    if not template or any(a.name == "chat-template" for a in user):
        return args, []
    candidates = [os.path.join(folder, template)] if folder else []
    candidates.append(str(shipped_chat_templates_dir() / template))
    for path in candidates:
        if os.path.isfile(path):
            return [*args, FlagArg("chat-template", ("--chat-template", path), PRESET_ARGS)], []
    where = (f"in {folder} nor among kaito-runtime's own" if folder
             else "among kaito-runtime's own (no --chat-template-dir given)")
    return args, [f"chat template {template} not found {where}; the tokenizer's own chat template is used (to use "
                  "the preset's, put the file in --chat-template-dir, or pass '-- --chat-template FILE')"]


def _parallel_sizes(args: Sequence[FlagArg], plan: LaunchPlan) -> tuple[int, int, int]:
    """TP, PP and DP as vLLM will get them from the merged arguments (the plan's where unset)."""
    return (
        last_int(args, "tensor-parallel-size", plan.tensor_parallel_size),
        last_int(args, "pipeline-parallel-size", plan.pipeline_parallel_size),
        last_int(args, "data-parallel-size", plan.data_parallel_size),
    )


def _cpu_processes(
    plan: LaunchPlan,
    inputs: CommandInputs,
    args: list[FlagArg],
    user: Sequence[FlagArg],
    sizes: tuple[int, int, int],
) -> tuple[list[FlagArg], CpuLayout | None, list[str]]:
    """CPU target: the process layout fitted to the ranks the merged flags ask for, and the
    warnings about it. GPU: none."""
    if plan.target != "cpu":
        return args, None, []
    tp, pp, dp = sizes
    kv_by_user = any(a.name == "kv-cache-memory-bytes" for a in user) or "VLLM_CPU_KVCACHE_SPACE" in inputs.base_env
    return layout_cpu(
        plan, args, tp=tp, pp=pp, dp=dp,
        is_user=lambda arg: any(arg is u for u in user),
        cpu_ids=inputs.cpu_ids, base_env=inputs.base_env, kv_set_by_user=kv_by_user,
    )


def _cpu_kv_space(
    plan: LaunchPlan,
    inputs: CommandInputs,
    args: Sequence[FlagArg],
    cpu: CpuLayout | None,
    sources: dict[str, str],
) -> tuple[float | None, list[str]]:
    """CPU target: the KV GiB per rank, with who chose it in ``sources[CPU_KV]``; a user's size
    that cannot fit in the free RAM is warned about. GPU: None."""
    if cpu is None:
        return None, []
    kv_gib, sources[CPU_KV], warnings = _cpu_kv(args, inputs.base_env, cpu)
    if sources[CPU_KV] != PLAN:
        warnings += _kv_ram_warning(plan, kv_gib, cpu.ranks, inputs.ram_available_bytes)
    return kv_gib, warnings


def _sources(args: Sequence[FlagArg], dropped: Sequence[str]) -> dict[str, str]:
    """flag -> the layer of its final value; a ``--no-X`` also answers for X."""
    found: dict[str, str] = {}
    for name in dropped:
        found[name] = CONFIG_FILE
        if name.startswith("no-"):
            found[name[3:]] = CONFIG_FILE
    for arg in args:
        if arg.name is None:
            continue
        found[arg.name] = arg.source
        if arg.name.startswith("no-"):
            found[arg.name[3:]] = arg.source
    return found


def _cpu_kv(
    args: Sequence[FlagArg], base_env: Mapping[str, str], cpu: CpuLayout
) -> tuple[float | None, str, list[str]]:
    """The KV space (GiB per rank) the CPU backend will allocate, who chose it, and a warning
    when an exported value is not one vLLM takes.

    vLLM's CPU platform lets an exported VLLM_CPU_KVCACHE_SPACE (whole GiB) override
    --kv-cache-memory-bytes; ours is only set when neither is given (see ``_env``).
    """
    exported = base_env.get("VLLM_CPU_KVCACHE_SPACE")
    if exported is not None:
        try:
            return float(int(exported)), ENVIRONMENT, []
        except ValueError:
            return None, ENVIRONMENT, [f"VLLM_CPU_KVCACHE_SPACE={exported!r} is not a whole number of GiB; vLLM will refuse it"]
    arg = last_arg(args, "kv-cache-memory-bytes")
    if arg is not None:
        size = parse_human_int(arg.values[0])
        return (size / GiB if size is not None else None), arg.source, []
    return float(cpu.kv_cache_gib), PLAN, []


def _kv_ram_warning(plan: LaunchPlan, kv_gib: float | None, ranks: int, ram_available_bytes: int | None) -> list[str]:
    """A user's KV size that cannot fit in the RAM the node has free (with the weights beside it)."""
    if kv_gib is None or not ram_available_bytes:
        return []
    kv_total = int(kv_gib * GiB) * ranks
    weights = plan.model.weights_bytes
    if kv_total + weights <= ram_available_bytes:
        return []
    each = f"{gib(int(kv_gib * GiB))} x {ranks} ranks = {gib(kv_total)}" if ranks > 1 else gib(kv_total)
    planned = f"; the plan chose {plan.cpu_kv_cache_gib} GiB per rank" if plan.cpu_kv_cache_gib else ""
    return [
        f"the KV cache you set ({each}) plus the weights ({gib(weights)}) is more than the "
        f"{gib(ram_available_bytes)} of RAM available; vLLM will fail to allocate it or be killed{planned}"
    ]


def _api_key_to_env(
    args: list[FlagArg], base_env: Mapping[str, str], env: dict[str, str]
) -> tuple[list[FlagArg], str | None, list[str]]:
    """Move a single --api-key from the argv (readable by anyone on the node through ps) into the
    child's VLLM_API_KEY. Several keys cannot travel in one variable: they stay, with a warning.
    Returns the argv groups, the key readiness checks use (--api-key wins over VLLM_API_KEY) and
    the warning about keys left on the command line."""
    arg = last_arg(args, "api-key")
    if arg is None:
        return args, base_env.get(API_KEY_ENV) or None, []
    if len(arg.values) > 1:
        return args, arg.values[0], [
            f"{len(arg.values)} --api-key values stay on vLLM's command line, where any process on this node "
            f"can read them; {API_KEY_ENV} holds only one key, so pass one to keep it off the command line"
        ]
    env[API_KEY_ENV] = arg.values[0]
    return [a for a in args if a is not arg], arg.values[0], []


MASK = "***"

# Variables whose value is a secret: masked when a launch is shown.
_SECRET_ENV = frozenset({API_KEY_ENV})


def display_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with secret values (the API key) replaced by '***', for logs and --dry-run."""
    return {key: MASK if key in _SECRET_ENV else value for key, value in env.items()}


def display_argv(launch: VllmLaunch) -> tuple[str, ...]:
    """The argv with every --api-key value replaced by '***', for logs and --dry-run."""
    shown: list[str] = []
    masking = False
    for token in launch.argv:
        if is_flag(token):
            masking = False
            if token.startswith("--") and normalise_flag(token) == "api-key":
                if "=" in token:
                    token = token.split("=", 1)[0] + "=" + MASK
                else:
                    masking = True
        elif masking:
            token = MASK
        shown.append(token)
    return tuple(shown)


def format_command(launch: VllmLaunch) -> str:
    """A shell line that reproduces the launch (for --dry-run): env -u ... VAR=value ... argv.
    API keys are shown as '***'."""
    parts = ["env"]
    parts += [f"-u {name}" for name in launch.unset_env]
    parts += [f"{key}={shlex.quote(value)}" for key, value in sorted(display_env(launch.env).items())]
    return " ".join(parts) + " " + shlex.join(display_argv(launch))


__all__ = [
    "ADAPTERS",
    "API_KEY_ENV",
    "CONFIG_FILE",
    "CommandInputs",
    "CPU_KV",
    "ENVIRONMENT",
    "PASS_THROUGH",
    "PLAN",
    "PRESET_ARGS",
    "TOKEN_ENV_VARS",
    "VllmLaunch",
    "build_vllm_command",
    "config_value",
    "display_argv",
    "display_env",
    "format_command",
    "lora_tokens",
    "normalise_flag",
    "parse_human_int",
]


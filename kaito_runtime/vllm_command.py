"""LaunchPlan -> the vLLM argv and environment. Pure: no processes, no file writes.

Flags come from the plan first, then the model's own ``vllm_args``, then the user's KAITO config
file ``vllm:`` section, then the arguments after ``--``. A later layer WINS: the earlier
occurrence of the same flag is removed (so vLLM never sees two), and a user value that
contradicts the fit check is kept but warned about with the numbers (presets.md mistake #12).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kaito_runtime.memory import gib
from kaito_runtime.values import LaunchPlan
from kaito_runtime.vllm_rules import CONTEXT_ALIGN, align_down, tp_rule_violation

# vLLM reads the Hub token from these; it runs offline on a local folder and must never see one.
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")

# Flags whose value is a secret: dropped from user arguments, never put in an argv.
_SECRET_FLAGS = frozenset({"hf-token"})

# Short spellings vLLM accepts for flags the plan sets (vllm.md "Parallelism flags").
_SHORT_FLAGS = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "n": "nnodes",
    "r": "node-rank",
}

_MODULE_ENTRY = "vllm.entrypoints.openai.api_server"
_NUMBER = re.compile(r"^-\d")


@dataclass(frozen=True)
class VllmLaunch:
    """What to start: argv, the variables to set and to remove, and warnings for the user.

    ``host``, ``port`` and ``served_model_names`` are what vLLM will actually use, read from the
    merged argv (plan, model, config file, pass-through): readiness checks must poll these.
    """

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    unset_env: tuple[str, ...] = TOKEN_ENV_VARS
    warnings: tuple[str, ...] = ()
    host: str = "0.0.0.0"
    port: int = 5000
    served_model_names: tuple[str, ...] = ()

    @property
    def served_model_name(self) -> str:
        """The first served name (the one clients are told about)."""
        return self.served_model_names[0] if self.served_model_names else ""


# ------------------------------------------------------------------------------------------------
# Argument groups: a flag with its values, compared by normalised name
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Arg:
    name: str | None  # normalised flag name ("max-model-len"); None for a stray positional
    tokens: tuple[str, ...]

    @property
    def values(self) -> tuple[str, ...]:
        first = self.tokens[0]
        if self.name is not None and "=" in first and first.startswith("--"):
            return (first.split("=", 1)[1], *self.tokens[1:])
        return self.tokens[1:] if self.name is not None else self.tokens


def normalise_flag(token: str) -> str:
    """'--max_model_len=8' -> 'max-model-len'; '-tp' -> 'tensor-parallel-size'."""
    bare = token.split("=", 1)[0] if token.startswith("--") else token
    short = not bare.startswith("--")
    name = bare.lstrip("-").replace("_", "-").lower()
    if short:
        return _SHORT_FLAGS.get(name, name)
    return name


def _is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.match(token)


def _group(tokens: Sequence[str]) -> list[_Arg]:
    groups: list[_Arg] = []
    current: list[str] = []
    for token in tokens:
        if _is_flag(token) or (current and current[0].startswith("--") and "=" in current[0]):
            if current:
                groups.append(_make(current))
            current = [token]
        else:
            current.append(token)
    if current:
        groups.append(_make(current))
    return groups


def _make(tokens: list[str]) -> _Arg:
    return _Arg(normalise_flag(tokens[0]) if _is_flag(tokens[0]) else None, tuple(tokens))


def _conflicts(a: str | None, b: str | None) -> bool:
    """Same flag, counting the --no-X form of a boolean flag X."""
    if a is None or b is None:
        return False
    return a == b or a == f"no-{b}" or b == f"no-{a}"


def config_value(value: object) -> str:
    """One config-file value as vLLM reads it: mappings and nested lists as compact JSON
    (``--compilation-config '{"level":3}'``), booleans as JSON, anything else as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _config_tokens(config_args: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """KAITO config ``vllm:`` section -> tokens, plus the flags it switches off (False/None).

    True is a bare switch; a list gives the flag several values (``--served-model-name a b``);
    a mapping is one JSON value.
    """
    tokens: list[str] = []
    dropped: list[str] = []
    for key, value in config_args.items():
        flag = "--" + str(key).lstrip("-")
        if value is None or value is False:
            dropped.append(normalise_flag(flag))
        elif value is True:
            tokens.append(flag)
        elif isinstance(value, (list, tuple)):
            tokens += [flag, *(config_value(v) for v in value)]
        else:
            tokens += [flag, config_value(value)]
    return tokens, dropped


def _merge(base: list[_Arg], layer: list[_Arg], dropped: Sequence[str] = ()) -> list[_Arg]:
    merged = [a for a in base if not any(_conflicts(a.name, d) for d in dropped)]
    for arg in layer:
        merged = [a for a in merged if not _conflicts(a.name, arg.name)]
        merged.append(arg)
    return merged


# ------------------------------------------------------------------------------------------------
# The plan's own flags
# ------------------------------------------------------------------------------------------------


def _plan_tokens(plan: LaunchPlan, host: str, port: int, auto_supported: bool, warnings: list[str]) -> list[str]:
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
    length = _max_model_len_value(plan, auto_supported, warnings)
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
    return t


def _max_model_len_value(plan: LaunchPlan, auto_supported: bool, warnings: list[str]) -> str | None:
    if not plan.max_model_len_auto:
        return str(plan.max_model_len) if plan.max_model_len else None
    if auto_supported:
        return "auto"
    if plan.kv_cache_tokens:
        estimate = min(plan.model.max_context, align_down(plan.kv_cache_tokens, CONTEXT_ALIGN))
        warnings.append(
            f"this vLLM has no '--max-model-len auto'; passing the planner's estimate {estimate} "
            "(if vLLM reports too little KV cache, lower it with --max-model-len)"
        )
        return str(estimate)
    return None


# ------------------------------------------------------------------------------------------------
# Warnings for user values that contradict the fit check
# ------------------------------------------------------------------------------------------------


def parse_human_int(text: str) -> int | None:
    """vLLM's human units: 1k = 1000, 1K = 1024, decimals allowed; None for 'auto' / garbage."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", text.strip())
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    return int(number * scale)


def _contradictions(plan: LaunchPlan, user: Sequence[_Arg]) -> list[str]:
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
            elif plan.kv_cache_tokens is not None and wanted > plan.kv_cache_tokens:
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
            tp = number if arg.name == "tensor-parallel-size" else _final_int(user, "tensor-parallel-size", plan.tensor_parallel_size)
            pp = number if arg.name == "pipeline-parallel-size" else _final_int(user, "pipeline-parallel-size", plan.pipeline_parallel_size)
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


def _final_int(args: Sequence[_Arg], name: str, default: int) -> int:
    for arg in reversed(args):
        if arg.name == name and arg.values:
            number = parse_human_int(arg.values[0])
            if number is not None:
                return number
    return default


# ------------------------------------------------------------------------------------------------
# CPU target: more than one rank needs processes of its own and explicit core binding
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _CpuLayout:
    single_process: bool  # engine core in the API server (VLLM_ENABLE_V1_MULTIPROCESSING=0)
    threads_bind: str  # VLLM_CPU_OMP_THREADS_BIND


def _id_list(ids: Sequence[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the form vLLM's parse_id_list reads)."""
    parts: list[str] = []
    start = prev = ids[0]
    for cpu in [*ids[1:], None]:
        if cpu is not None and cpu == prev + 1:
            prev = cpu
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if cpu is not None:
            start = prev = cpu
    return ",".join(parts)


def cpu_bind_lists(cpu_ids: Sequence[int], ranks: int) -> str:
    """VLLM_CPU_OMP_THREADS_BIND for ``ranks`` local ranks: the cores split into contiguous,
    near-equal lists joined by '|' ('0|1' for 2 cores and 2 ranks, '0-3|4-7' for 8 and 2).
    With fewer cores than ranks, ranks share cores round-robin."""
    ids = sorted(set(cpu_ids)) or [0]
    if len(ids) < ranks:
        return "|".join(str(ids[i % len(ids)]) for i in range(ranks))
    size, extra = divmod(len(ids), ranks)
    lists, start = [], 0
    for rank in range(ranks):
        end = start + size + (1 if rank < extra else 0)
        lists.append(_id_list(ids[start:end]))
        start = end
    return "|".join(lists)


def _usable_cpus() -> list[int]:
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def _cpu_layout(
    plan: LaunchPlan,
    args: list[_Arg],
    user: Sequence[_Arg],
    cpu_ids: Sequence[int] | None,
    base_env: Mapping[str, str],
    warnings: list[str],
) -> tuple[list[_Arg], _CpuLayout]:
    """Adjust the merged CPU arguments to the world size they ask for (vllm-cpu.md).

    One rank: the plan's single-process settings stay. More (TP or PP from the config file or
    pass-through): the plan's ``--distributed-executor-backend uni`` and the single-process
    variable go, and each local rank gets its own core list, because 'auto' binds one rank per
    NUMA node and fails on a one-node machine. PP needs compiled mode: the plan's
    ``--enforce-eager`` goes; a user's is kept with a warning.
    """
    tp = _final_int(args, "tensor-parallel-size", 1)
    pp = _final_int(args, "pipeline-parallel-size", 1)
    dp = _final_int(args, "data-parallel-size", 1)
    planned = plan.cpu_threads_bind or "auto"
    if tp * pp * dp <= 1:
        return args, _CpuLayout(single_process=not plan.topology.multi_node, threads_bind=planned)

    def from_user(arg: _Arg) -> bool:
        return any(arg is u for u in user)

    dropped: list[str] = []
    kept: list[_Arg] = []
    for arg in args:
        if arg.name == "distributed-executor-backend" and arg.values == ("uni",):
            if from_user(arg):
                warnings.append(
                    f"--distributed-executor-backend uni runs a single process and cannot run "
                    f"TP {tp} x PP {pp}; drop it or use mp"
                )
            else:
                dropped.append("--distributed-executor-backend uni (single process)")
                continue
        if arg.name == "enforce-eager" and pp > 1:
            if from_user(arg):
                warnings.append(
                    f"pipeline parallelism (PP {pp}) on the CPU backend needs compiled mode: with "
                    "--enforce-eager the first request kills the engine (vllm-cpu.md); drop --enforce-eager"
                )
            else:
                dropped.append("--enforce-eager (PP on CPU needs compiled mode)")
                continue
        kept.append(arg)

    local_ranks = max(1, tp * pp // max(1, plan.topology.nnodes)) * dp
    exported_bind = "VLLM_CPU_OMP_THREADS_BIND" in base_env
    cpus = list(cpu_ids) if cpu_ids is not None else _usable_cpus()
    bind = cpu_bind_lists(cpus, local_ranks)
    dp_text = f" x DP {dp}" if dp > 1 else ""
    warnings.append(
        f"CPU target with TP {tp} x PP {pp}{dp_text} = {tp * pp * dp} ranks ({local_ranks} on this node, "
        f"{len(cpus)} CPU cores) where the plan was for one process: dropped "
        f"{', '.join([*dropped, 'VLLM_ENABLE_V1_MULTIPROCESSING=0 (single process)'])}; "
        + (f"keeping the exported VLLM_CPU_OMP_THREADS_BIND={base_env['VLLM_CPU_OMP_THREADS_BIND']}"
           if exported_bind else f"binding one core list per rank, VLLM_CPU_OMP_THREADS_BIND={bind}")
    )
    if len(cpus) < local_ranks:
        warnings.append(f"{local_ranks} CPU ranks share {len(cpus)} core(s); expect a slow server")
    return kept, _CpuLayout(single_process=False, threads_bind=bind)


def _effective_endpoint(
    args: Sequence[_Arg], host: str, port: int, model_path: str, warnings: list[str]
) -> tuple[str, int, tuple[str, ...]]:
    """Host, port and served names vLLM will use, read from the merged arguments."""
    for arg in reversed(args):
        if arg.name == "host" and arg.values:
            host = arg.values[0]
            break
    for arg in reversed(args):
        if arg.name == "port" and arg.values:
            try:
                port = int(arg.values[0])
            except ValueError:
                warnings.append(f"--port {arg.values[0]!r} is not a number; vLLM will refuse it")
            break
    names: tuple[str, ...] = (model_path,)  # vLLM's default: the model argument
    for arg in reversed(args):
        if arg.name == "served-model-name":
            names = arg.values or names
            break
    return host, port, names


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def _model_as_flag(entrypoint: Sequence[str]) -> bool:
    """The module entry (python -m vllm.entrypoints.openai.api_server) takes --model PATH."""
    return any(part == _MODULE_ENTRY or part.endswith("api_server.py") for part in entrypoint)


def _env(
    plan: LaunchPlan,
    base_env: Mapping[str, str],
    host_ip: str | None,
    user_flags: set[str | None],
    cpu: _CpuLayout | None,
    warnings: list[str],
) -> dict[str, str]:
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
            wanted["VLLM_CPU_KVCACHE_SPACE"] = str(plan.cpu_kv_cache_gib or 1)
        elif base_env.get("VLLM_CPU_KVCACHE_SPACE"):
            warnings.append(
                "VLLM_CPU_KVCACHE_SPACE is set in the environment and overrides --kv-cache-memory-bytes on the CPU backend"
            )
        wanted["VLLM_CPU_OMP_THREADS_BIND"] = cpu.threads_bind
        if cpu.single_process:
            wanted["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if host_ip:
        # Multi-node: this node's address for torch.distributed (the caller resolves it).
        wanted["VLLM_HOST_IP"] = host_ip
    for key, value in wanted.items():
        if key not in base_env:  # a value the user exported wins
            env[key] = value
    return env


def build_vllm_command(
    plan: LaunchPlan,
    *,
    model_path: str,
    entrypoint: Sequence[str] = ("vllm", "serve"),
    model_as_flag: bool | None = None,
    host: str = "0.0.0.0",
    port: int = 5000,
    extra_args: Sequence[str] = (),
    config_args: Mapping[str, object] | None = None,
    chat_template_dir: str | None = None,
    base_env: Mapping[str, str] | None = None,
    host_ip: str | None = None,
    max_model_len_auto_supported: bool = True,
    cpu_ids: Sequence[int] | None = None,
) -> VllmLaunch:
    """The vLLM command for ``plan`` serving the weights in ``model_path``.

    ``model_as_flag`` None: decided from ``entrypoint`` (module entry -> ``--model PATH``).
    ``base_env``: the environment the child inherits; variables the user set there win over ours.
    ``host_ip``: this node's address for multi-node runs (``VLLM_HOST_IP``).
    ``cpu_ids``: the cores vLLM may use on the CPU target (default: this process's affinity);
    used only when the merged arguments ask for more than one CPU rank.
    """
    warnings: list[str] = []
    base_env = base_env or {}
    as_flag = _model_as_flag(entrypoint) if model_as_flag is None else model_as_flag
    head = [*entrypoint, *(("--model", model_path) if as_flag else (model_path,))]

    args = _group(_plan_tokens(plan, host, port, max_model_len_auto_supported, warnings))
    args = _merge(args, _group(plan.model.vllm_args))

    user: list[_Arg] = []
    dropped: list[str] = []
    if config_args:
        tokens, dropped = _config_tokens(config_args)
        user += _group(tokens)
    user += _group(extra_args)
    secret = [a for a in user if a.name in _SECRET_FLAGS]
    if secret:
        warnings.append(
            "dropped --hf-token from the vLLM arguments: tokens never go on a command line and vLLM "
            "runs offline from the downloaded folder"
        )
        user = [a for a in user if a.name not in _SECRET_FLAGS]

    template = plan.model.chat_template
    user_template = any(a.name == "chat-template" for a in user)
    if template and not user_template:
        path = os.path.join(chat_template_dir, template) if chat_template_dir else None
        if path and os.path.isfile(path):
            args.append(_Arg("chat-template", ("--chat-template", path)))
        else:
            where = chat_template_dir or "(no chat-template folder given)"
            warnings.append(
                f"chat template {template} not found in {where}; the tokenizer's own chat template is used"
            )

    args = _merge(args, [], dropped)
    args = _merge(args, user)
    warnings += _contradictions(plan, user)
    cpu: _CpuLayout | None = None
    if plan.target == "cpu":
        args, cpu = _cpu_layout(plan, args, user, cpu_ids, base_env, warnings)
    eff_host, eff_port, names = _effective_endpoint(args, host, port, model_path, warnings)

    argv = tuple(head + [token for arg in args for token in arg.tokens])
    env = _env(plan, base_env, host_ip, {a.name for a in user}, cpu, warnings)
    return VllmLaunch(
        argv=argv,
        env=env,
        unset_env=TOKEN_ENV_VARS,
        warnings=tuple(warnings),
        host=eff_host,
        port=eff_port,
        served_model_names=names,
    )


def format_command(launch: VllmLaunch) -> str:
    """A shell line that reproduces the launch (for --dry-run): env -u ... VAR=value ... argv."""
    parts = ["env"]
    parts += [f"-u {name}" for name in launch.unset_env]
    parts += [f"{key}={shlex.quote(value)}" for key, value in sorted(launch.env.items())]
    return " ".join(parts) + " " + shlex.join(launch.argv)


__all__ = [
    "TOKEN_ENV_VARS",
    "VllmLaunch",
    "build_vllm_command",
    "config_value",
    "cpu_bind_lists",
    "format_command",
    "normalise_flag",
    "parse_human_int",
]


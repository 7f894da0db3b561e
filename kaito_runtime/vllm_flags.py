"""The one parser of vLLM command-line flags, for every place that reads them: the catalog's
reserved-flag check, the config file, the arguments after ``--`` and the command builder.

vLLM's own parser accepts ``--max-model-len 8``, ``--max_model_len=8``, ``--Max-Model-Len 8`` and
the short forms ``-tp 2`` / ``-pp 2``; every spelling here becomes one normalised name
(``max-model-len``), so a rule about a flag holds for all of them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from kaito_runtime.errors import InputError

from kaito_runtime.numbers import parse_decimal, parse_int

if TYPE_CHECKING:
    from kaito_runtime.types import PlanOverrides

PLAN = "plan"  # the source of a flag the launcher itself computed
# The user's layers, in the order they are merged (a later one wins): the KAITO config file's
# `vllm:` section, then the arguments after `--`.
CONFIG_FILE = "--config"
PASS_THROUGH = "pass-through"

# vLLM --kv-cache-dtype choices (vllm.md "Memory flags"); every fp8 variant stores 1 byte.
KNOWN_KV_CACHE_DTYPES = ("auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla")

# Flags whose value is a secret (normalised names, so every spelling counts: --api_key=K,
# --HF-TOKEN x): never published for --join workers, never compared or reported as text.
SECRET_FLAGS = frozenset({"hf-token", "api-key"})
# The secret flags dropped from the user's arguments (the API key goes to vLLM by its environment:
# launch.vllm_command moves it there).
DROPPED_SECRET_FLAGS = frozenset({"hf-token"})

# Short spellings vLLM accepts for flags the plan sets (vllm.md "Parallelism flags").
SHORT_FLAGS = {
    "tp": "tensor-parallel-size",
    "pp": "pipeline-parallel-size",
    "dp": "data-parallel-size",
    "n": "nnodes",
    "r": "node-rank",
}

_NUMBER = re.compile(r"^-[0-9]")


@dataclass(frozen=True)
class FlagArg:
    name: str | None  # normalised flag name ("max-model-len"); None for a stray positional
    tokens: tuple[str, ...]
    source: str = PLAN

    @property
    def values(self) -> tuple[str, ...]:
        first = self.tokens[0]
        if self.name is not None and "=" in first:
            return (first.split("=", 1)[1], *self.tokens[1:])
        return self.tokens[1:] if self.name is not None else self.tokens


def normalise_flag(token: str) -> str:
    """'--max_model_len=8' -> 'max-model-len'; '-tp' -> 'tensor-parallel-size'."""
    bare = token.split("=", 1)[0]
    short = not bare.startswith("--")
    name = bare.lstrip("-").replace("_", "-").lower()
    if short:
        return SHORT_FLAGS.get(name, name)
    return name


def is_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not _NUMBER.match(token)


def group(tokens: Sequence[str], source: str = PLAN) -> list[FlagArg]:
    groups: list[FlagArg] = []
    current: list[str] = []
    for token in tokens:
        if is_flag(token) or (current and is_flag(current[0]) and "=" in current[0]):
            if current:
                groups.append(_make(current, source))
            current = [token]
        else:
            current.append(token)
    if current:
        groups.append(_make(current, source))
    return groups


def _make(tokens: list[str], source: str) -> FlagArg:
    return FlagArg(normalise_flag(tokens[0]) if is_flag(tokens[0]) else None, tuple(tokens), source)


def without_secret_flags(tokens: Sequence[str]) -> list[str]:
    """``tokens`` without any secret flag and all of its values, in every spelling
    (``--api_key=K``, ``--hf_token hf_x``, ``--api-key k1 k2``)."""
    return [token for arg in group(tokens) if arg.name not in SECRET_FLAGS for token in arg.tokens]


def parse_human_int(text: str) -> int | None:
    """vLLM's human units: 1k = 1000, 1K = 1024, decimals allowed; None for 'auto' / garbage."""
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([kKmMgGtT]?)", text.strip())
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2)
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[unit]
    value = number * scale
    return int(value) if math.isfinite(value) else None



def last_arg(args: Sequence[FlagArg], name: str) -> FlagArg | None:
    """The last occurrence of flag ``name`` that has a value (vLLM's rule: the last one wins);
    the one scan every "which value does vLLM get" question uses."""
    for arg in reversed(args):
        if arg.name == name and arg.values:
            return arg
    return None


def last_value(args: Sequence[FlagArg], name: str) -> str | None:
    """The first value of the last occurrence of flag ``name``."""
    arg = last_arg(args, name)
    return arg.values[0] if arg is not None else None


def last_int(args: Sequence[FlagArg], name: str, default: int) -> int:
    """``last_value`` as a number (human units allowed); ``default`` when absent or not a number."""
    value = last_value(args, name)
    number = parse_human_int(value) if value is not None else None
    return default if number is None else number


def last_float(args: Sequence[FlagArg], name: str, default: float | None) -> float | None:
    value = last_value(args, name)
    number = parse_decimal(value) if value is not None else None
    return default if number is None else number


def flag_names(tokens: Sequence[str]) -> set[str]:
    """The normalised names of every flag in ``tokens``."""
    return {arg.name for arg in group(tokens) if arg.name is not None}


# The flags whose values the launcher itself interprets (plans with, checks the port of, sizes
# the KV cache by): their values are checked before anything starts, from every source.
_WHOLE = ("tensor-parallel-size", "pipeline-parallel-size", "data-parallel-size")


def value_problem(name: str, value: str, kv_cache_dtypes: Sequence[str] = KNOWN_KV_CACHE_DTYPES) -> str | None:
    """Why ``value`` is not acceptable for flag ``name`` (None when it is, or when the launcher does
    not interpret that flag: vLLM owns the others)."""
    if name in _WHOLE:
        number = parse_int(value)
        return None if number is not None and number >= 1 else "a whole number >= 1 (digits 0-9) is expected"
    if name == "max-model-len":
        if value.strip().lower() == "auto":
            return None
        number = parse_human_int(value)
        return None if number is not None and number >= 1 else "a positive number of tokens (e.g. 8192 or 32k) or auto is expected"
    if name == "gpu-memory-utilization":
        fraction = parse_decimal(value)
        return None if fraction is not None and 0 < fraction <= 1 else "a fraction in (0, 1] is expected, e.g. 0.9"
    if name == "port":
        port = parse_int(value)
        return None if port is not None and 1 <= port <= 65535 else "a port number 1-65535 is expected"
    if name == "kv-cache-dtype":
        return None if value in kv_cache_dtypes else "one of " + ", ".join(kv_cache_dtypes) + " is expected"
    return None


def first_bad_value(
    args: Sequence[FlagArg], kv_cache_dtypes: Sequence[str] = KNOWN_KV_CACHE_DTYPES
) -> tuple[FlagArg, str, str] | None:
    """(the flag, its value, why) for the first value the launcher cannot use, else None."""
    for arg in args:
        if arg.name is None:
            continue
        for value in arg.values[:1]:
            problem = value_problem(arg.name, value, kv_cache_dtypes)
            if problem is not None:
                return arg, value, problem
    return None



# ------------------------------------------------------------------------------------------------
# Layers: a later layer's value of a flag replaces the earlier one
# ------------------------------------------------------------------------------------------------


def conflicts(a: str | None, b: str | None) -> bool:
    """Same flag, counting the --no-X form of a boolean flag X."""
    if a is None or b is None:
        return False
    return a == b or a == f"no-{b}" or b == f"no-{a}"


def merge(base: Sequence[FlagArg], layer: Sequence[FlagArg], dropped: Sequence[str] = ()) -> list[FlagArg]:
    """``base`` without the flags ``dropped`` names, then each flag of ``layer`` replacing any
    earlier occurrence (so vLLM never sees a flag twice)."""
    merged = [a for a in base if not any(conflicts(a.name, d) for d in dropped)]
    for arg in layer:
        merged = [a for a in merged if not conflicts(a.name, arg.name)]
        merged.append(arg)
    return merged


def config_value(value: object) -> str:
    """One config-file value as vLLM reads it: mappings and nested lists as compact JSON
    (``--compilation-config '{"level":3}'``), booleans as JSON, anything else as text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def config_tokens(config_args: Mapping[str, object]) -> tuple[list[str], list[str]]:
    """KAITO config ``vllm:`` section -> tokens, plus the flags it switches off (False/None).

    Keys may carry their leading dashes or not (``--enforce-eager`` = ``enforce-eager``).
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


@dataclass(frozen=True)
class UserArgs:
    """The user's vLLM arguments, parsed once: the config file's ``vllm:`` flags, then the
    arguments after ``--``, merged so that the later value of a flag wins (the earlier one is
    neither sent nor checked against the plan), without secrets. Each ``FlagArg`` knows its
    source (CONFIG_FILE or PASS_THROUGH). The planner, the architecture check, the command
    builder and the group's published request all read this one value."""

    args: tuple[FlagArg, ...] = ()
    switched_off: tuple[str, ...] = ()  # flags the config file sets to false/null (left out)
    published: tuple[str, ...] = ()  # the merged flags without secrets, as a --join worker gets them
    warnings: tuple[str, ...] = ()  # what was dropped, for the user

    @property
    def names(self) -> frozenset[str]:
        return frozenset(a.name for a in self.args if a.name is not None)

    def last_value(self, name: str) -> str | None:
        return last_value(self.args, name)

    @property
    def remote_code(self) -> bool:
        """The user asked vLLM to run the repo's code (``--trust-remote-code``)."""
        return "trust-remote-code" in self.names

    def sized(self, overrides: PlanOverrides) -> PlanOverrides:
        """The plan options with the sizes these flags set: vLLM gets them either way, so the
        plan must agree (a TP size from here left the planned data-parallel size in place). The
        batch budget and CUDA graphs change vLLM's non-KV memory: plan with what vLLM will get."""
        sizes: dict[str, object] = {}
        for flag, name in (("tensor-parallel-size", "tensor_parallel_size"), ("pipeline-parallel-size", "pipeline_parallel_size")):
            value = self.last_value(flag)
            if value is not None:
                sizes[name] = int(value)
        for flag, name in (("max-num-batched-tokens", "max_num_batched_tokens"), ("max-num-seqs", "max_num_seqs")):
            value = self.last_value(flag)
            number = parse_human_int(value) if value is not None else None
            if number:
                sizes[name] = number
        eager = [a.name for a in self.args if a.name in ("enforce-eager", "no-enforce-eager")]
        if eager and (eager[-1] == "enforce-eager") != overrides.enforce_eager:
            sizes["enforce_eager"] = eager[-1] == "enforce-eager"
        return replace(overrides, **sizes) if sizes else overrides


def parse_user_args(
    config_args: Mapping[str, object] | None,
    pass_through: Sequence[str],
    *,
    config_path: Path | None = None,
    check: bool = True,
) -> UserArgs:
    """Tokenise, check and merge the user's two layers (the one place that does). A value the
    launcher interprets (a parallel size, the context, the port, ...) that vLLM would refuse is
    an InputError (exit 2) naming the layer and the value, before anything is fetched
    (``check=False``: left for the command builder to warn about)."""
    config, switched_off = config_tokens(config_args) if config_args else ([], [])
    layers = [*group(config, CONFIG_FILE), *group(pass_through, PASS_THROUGH)]
    bad = first_bad_value(layers) if check else None
    if bad is not None:
        arg, value, problem = bad
        where = f"the config file {config_path}" if arg.source == CONFIG_FILE else "the pass-through arguments (after --)"
        raise InputError(
            f"--{arg.name} {value!r} in {where} is not a value vLLM accepts",
            why=problem,
            fix=f"correct --{arg.name} in {where}",
        )
    merged = merge([], layers)
    warnings: tuple[str, ...] = ()
    if any(a.name in DROPPED_SECRET_FLAGS for a in merged):
        warnings = (
            "dropped --hf-token from the vLLM arguments: tokens never go on a command line and vLLM "
            "runs offline from the downloaded folder",
        )
        merged = [a for a in merged if a.name not in DROPPED_SECRET_FLAGS]
    published = tuple(token for arg in merged if arg.name not in SECRET_FLAGS for token in arg.tokens)
    return UserArgs(tuple(merged), tuple(switched_off), published, warnings)

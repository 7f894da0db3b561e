"""The one parser of vLLM command-line flags, for every place that reads them: the catalog's
reserved-flag check, the config file, the arguments after ``--`` and the command builder.

vLLM's own parser accepts ``--max-model-len 8``, ``--max_model_len=8``, ``--Max-Model-Len 8`` and
the short forms ``-tp 2`` / ``-pp 2``; every spelling here becomes one normalised name
(``max-model-len``), so a rule about a flag holds for all of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kaito_runtime.numbers import parse_decimal, parse_int

PLAN = "plan"  # the source of a flag the launcher itself computed

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


def value_problem(name: str, value: str, kv_cache_dtypes: Sequence[str]) -> str | None:
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


def first_bad_value(args: Sequence[FlagArg], kv_cache_dtypes: Sequence[str]) -> tuple[FlagArg, str, str] | None:
    """(the flag, its value, why) for the first value the launcher cannot use, else None."""
    for arg in args:
        if arg.name is None:
            continue
        for value in arg.values[:1]:
            problem = value_problem(arg.name, value, kv_cache_dtypes)
            if problem is not None:
                return arg, value, problem
    return None


"""Numeric settings read from environment variables, refused with a clear error when malformed."""

from __future__ import annotations

import math
from collections.abc import Mapping

from kaito_runtime.errors import InputError


def seconds_from_env(env: Mapping[str, str], name: str, default: float, *, allow_zero: bool = False) -> float:
    """``name`` as a finite number of seconds (above 0, or 0 or more with ``allow_zero``);
    ``default`` when unset or empty."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    smallest_ok = value >= 0 if allow_zero else value > 0
    if not (smallest_ok and math.isfinite(value)):
        bound = "0 or more" if allow_zero else "above 0"
        raise InputError(
            f"{name}={raw!r} is not a number of seconds ({bound})",
            fix=f"set {name} to e.g. {default:g}, or unset it",
        )
    return value

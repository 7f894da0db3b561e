"""The one way the launcher reads a number or a duration from text (options, environment
variables, config and pass-through values, the group store), and the ranges of its durations.

Numbers are written with the ASCII digits 0-9 only. ``str.isdigit`` also accepts superscripts
and other scripts' digits, some of which ``int()`` takes and some it refuses; vLLM's own parser
would read others again differently. One rule for every source: ASCII, or a clear refusal.

Every duration (a grace period, a timeout) is a finite number of seconds within the range its
``DurationRange`` states: ``nan`` and ``inf`` are refused everywhere, so no deadline can be
switched off by accident.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from kaito_runtime.errors import InputError

_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_int(text: object) -> int | None:
    """``text`` as a whole number written with ASCII digits (an optional sign, spaces around);
    None for anything else ("1.0", "1_000", "٣", "²", "")."""
    if isinstance(text, bool):
        return None
    if isinstance(text, int):
        return text
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if not _INT.fullmatch(stripped):
        return None
    try:
        return int(stripped)
    except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
        return None


def parse_decimal(text: object) -> float | None:
    """``text`` as a finite decimal number written with ASCII digits ("30", "2.5", "1e3"); None
    for anything else, "nan" and "inf" included."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        value = float(text)
    elif isinstance(text, str) and _DECIMAL.fullmatch(text.strip()):
        value = float(text.strip())
    else:
        return None
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class DurationRange:
    """Where a duration is valid: ``minimum`` (excluded when ``above``) to ``maximum`` seconds."""

    minimum: float
    maximum: float
    above: bool = False  # the minimum itself is not allowed (a timeout of 0 s means nothing)

    def contains(self, value: float) -> bool:
        low_ok = value > self.minimum if self.above else value >= self.minimum
        return math.isfinite(value) and low_ok and value <= self.maximum

    def option_bounds(self) -> dict[str, object]:
        """The declaration of an option holding such a duration (types.option's keywords)."""
        return {"kind": "seconds", "low": self.minimum, "high": self.maximum, "low_open": self.above}

    def describe(self) -> str:
        if self.above:
            return f"a number of seconds above {self.minimum:g} and at most {self.maximum:g}"
        return f"a number of seconds from {self.minimum:g} to {self.maximum:g}"


DAY = 86400.0
# The stated ranges (docs/operations.md, "Timeouts"); each source of a duration is checked
# against its own here.
GRACE_PERIOD = DurationRange(0.0, 3600.0)
READY_TIMEOUT = DurationRange(0.0, 7 * DAY, above=True)
RENDEZVOUS_TIMEOUT = DurationRange(0.0, 7 * DAY, above=True)
PEER_TIMEOUT = DurationRange(1.0, 3600.0)
HUB_TIMEOUT = DurationRange(0.0, DAY, above=True)
WEIGHTS_LOCK_TIMEOUT = DurationRange(0.0, 7 * DAY)


def seconds(value: object, allowed: DurationRange, *, name: str, fix: str, subject: str | None = None) -> float:
    """``value`` (text or a number) as seconds within ``allowed``; InputError (exit 2) naming
    ``name``, the value and the range otherwise (``subject``, when given, names both, e.g.
    "KAITO_HUB_TIMEOUT='nan'"). ``fix`` says where to change it."""
    number = parse_decimal(value)
    if number is None or not allowed.contains(number):
        raise InputError(
            f"{subject or f'{name} {value!r}'} is not a valid duration",
            why=f"it must be {allowed.describe()}",
            fix=fix,
        )
    return number

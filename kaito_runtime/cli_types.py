"""click parameter types that read numbers the launcher's one way (kaito_runtime.numbers): ASCII
digits only, finite values, durations within their stated range. click's own int and float
types take "nan", "inf" and other scripts' digits."""

from __future__ import annotations

import click

from kaito_runtime import numbers
from kaito_runtime.errors import shortened


class Seconds(click.ParamType):
    """A duration: finite seconds from ``low`` (excluded with ``low_open``) to ``high``."""

    name = "seconds"

    def __init__(self, low: float, high: float | None, *, low_open: bool = False) -> None:
        self.allowed = numbers.DurationRange(low, high if high is not None else numbers.DAY * 7, above=low_open)

    def convert(self, value, param, ctx):
        number = numbers.parse_decimal(value)
        if number is None or not self.allowed.contains(number):
            self.fail(f"{_shown(value)} is not {self.allowed.describe()}", param, ctx)
        return number


class WholeNumber(click.ParamType):
    """A whole number written with the digits 0-9, within ``minimum`` and ``maximum`` when given."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        number = numbers.parse_int(value)
        if number is None:
            self.fail(f"{_shown(value)} is not a whole number written with the digits 0-9", param, ctx)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            self.fail(f"{_shown(number)} is not in the range {_range(self.minimum, self.maximum)}", param, ctx)
        return number


class Decimal(click.ParamType):
    """A finite decimal number (ASCII digits), within ``low`` and ``high`` when given."""

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False) -> None:
        self.low, self.high, self.low_open = low, high, low_open

    def convert(self, value, param, ctx):
        number = numbers.parse_decimal(value)
        if number is None:
            self.fail(f"{_shown(value)} is not a finite number written with the digits 0-9", param, ctx)
        below = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        if below or (self.high is not None and number > self.high):
            self.fail(f"{number:g} is not in the range {_range(self.low, self.high, self.low_open)}", param, ctx)
        return number


def _shown(value: object) -> str:
    """A value as an error line quotes it: repr, cut at 100 characters (it may be huge)."""
    return shortened(repr(value), 100)


def _range(low: float | None, high: float | None, low_open: bool = False) -> str:
    left = "x" if low is None else f"{low:g}{'<' if low_open else '<='}x"
    return left if high is None else f"{left}<={high:g}"

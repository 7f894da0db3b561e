"""click parameter types that read numbers the launcher's one way (kaito_runtime.numbers): ASCII
digits only, durations finite and within their stated range. click's own int/float types take
"nan", "inf" and other scripts' digits."""

from __future__ import annotations

import click

from kaito_runtime import numbers
from kaito_runtime.errors import InputError


class Seconds(click.ParamType):
    """A duration within ``allowed`` (a numbers.DurationRange)."""

    name = "seconds"

    def __init__(self, allowed: numbers.DurationRange) -> None:
        self.allowed = allowed

    def convert(self, value, param, ctx):
        try:
            return numbers.seconds(value, self.allowed, name="the value", fix="-")
        except InputError:
            self.fail(f"{value!r} is not {self.allowed.describe()}", param, ctx)


class WholeNumber(click.ParamType):
    """A whole number written with the digits 0-9, from ``minimum`` (to ``maximum`` when given)."""

    name = "integer"

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum, self.maximum = minimum, maximum

    def convert(self, value, param, ctx):
        number = numbers.parse_int(value)
        if number is None:
            self.fail(f"{value!r} is not a whole number written with the digits 0-9", param, ctx)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            low = "" if self.minimum is None else f"from {self.minimum}"
            high = "" if self.maximum is None else f" to {self.maximum}" if low else f"up to {self.maximum}"
            self.fail(f"{number} is out of range: a whole number {low}{high} is expected", param, ctx)
        return number


class Fraction(click.ParamType):
    """A finite decimal from ``low`` to ``high`` (both included)."""

    name = "fraction"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        number = numbers.parse_decimal(value)
        if number is None or not self.low <= number <= self.high:
            self.fail(f"{value!r} is not a number from {self.low:g} to {self.high:g}", param, ctx)
        return number

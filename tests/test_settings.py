"""Seconds read from environment variables: defaults, bounds and the error a user sees."""

from __future__ import annotations

import pytest

from kaito_runtime.errors import InputError
from kaito_runtime.numbers import DurationRange
from kaito_runtime.settings import seconds_from_env

ABOVE_ZERO = DurationRange(0.0, 3600.0, above=True)
ZERO_OR_MORE = DurationRange(0.0, 3600.0)


def test_unset_or_blank_gives_the_default():
    assert seconds_from_env({}, "T", 30.0, ABOVE_ZERO) == 30.0
    assert seconds_from_env({"T": "  "}, "T", 30.0, ABOVE_ZERO) == 30.0


def test_a_number_is_read():
    assert seconds_from_env({"T": "2.5"}, "T", 30.0, ABOVE_ZERO) == 2.5


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "inf", "nan", "3601", "٣"])
def test_bad_values_above_zero_are_refused_naming_the_variable(raw):
    with pytest.raises(InputError) as caught:
        seconds_from_env({"T": raw}, "T", 30.0, ABOVE_ZERO)
    assert "T=" in str(caught.value) and "above 0" in str(caught.value)
    assert caught.value.exit_code == 2


def test_zero_is_allowed_when_the_range_starts_there():
    assert seconds_from_env({"T": "0"}, "T", 60.0, ZERO_OR_MORE) == 0.0
    with pytest.raises(InputError, match="from 0 to 3600"):
        seconds_from_env({"T": "-3"}, "T", 60.0, ZERO_OR_MORE)

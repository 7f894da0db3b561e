"""Numbers and durations are read one way from every source (issue 18, items 6 and 7): ASCII
digits only, durations finite and within their stated range; a bad value is one line, exit 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from kaito_runtime.cli import main
from kaito_runtime.errors import InputError
from kaito_runtime.numbers import (
    GRACE_PERIOD,
    PEER_TIMEOUT,
    parse_decimal,
    parse_int,
    seconds,
)
from kaito_runtime.request import RuntimeRequest

PLAN = ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "4xH100"]
# Characters str.isdigit() accepts: a superscript (int() refuses it), Arabic-Indic and
# full-width digits (int() takes them), a circled digit (int() refuses it).
OTHER_DIGITS = ["²", "٣", "３", "①", "1²"]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def _one_error(result) -> str:
    assert "Traceback" not in result.output and "unexpected" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("text", OTHER_DIGITS + ["1.0", "1_000", "", " ", "0x10", "nan"])
def test_parse_int_takes_ascii_digits_only(text):
    assert parse_int(text) is None


def test_parse_int_reads_ascii_numbers():
    assert parse_int(" 42 ") == 42 and parse_int("-3") == -3 and parse_int("+7") == 7


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "infinity", "1e999", "٣", "²", "1,5", ""])
def test_parse_decimal_refuses_other_scripts_and_non_finite_values(text):
    assert parse_decimal(text) is None


def test_parse_decimal_reads_plain_numbers():
    assert parse_decimal("2.5") == 2.5 and parse_decimal("30") == 30.0 and parse_decimal("1e3") == 1000.0


@pytest.mark.parametrize("value", ["nan", "inf", float("nan"), float("inf"), "-1", "3601", "1e9"])
def test_a_grace_period_outside_its_range_is_refused(value):
    with pytest.raises(InputError) as caught:
        seconds(value, GRACE_PERIOD, name="--grace-period", fix="give e.g. 30")
    assert caught.value.exit_code == 2 and "from 0 to 3600" in str(caught.value)


def test_a_peer_timeout_below_one_second_is_refused():
    with pytest.raises(InputError):
        seconds("0.5", PEER_TIMEOUT, name="--peer-timeout", fix="x")


# --- every source of a duration -------------------------------------------------------------------

DURATION_OPTIONS = [
    ("--grace-period", "KAITO_GRACE_PERIOD"),
    ("--ready-timeout", "KAITO_READY_TIMEOUT"),
    ("--rendezvous-timeout", "KAITO_RENDEZVOUS_TIMEOUT"),
    ("--peer-timeout", "KAITO_PEER_TIMEOUT"),
]


@pytest.mark.parametrize("option,variable", DURATION_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999", "٣"])
def test_a_non_finite_duration_option_is_refused(option, variable, value):
    result = invoke(*PLAN, option, value)
    assert result.exit_code == 2, result.output
    assert option in result.output


@pytest.mark.parametrize("option,variable", DURATION_OPTIONS)
def test_a_non_finite_duration_from_the_environment_is_refused(option, variable):
    result = invoke(*PLAN, env={variable: "nan"})
    assert result.exit_code == 2, result.output
    assert variable in result.output or option in result.output


@pytest.mark.parametrize("field,value", [
    ("grace_seconds", float("nan")),
    ("grace_seconds", float("inf")),
    ("ready_timeout", float("nan")),
    ("rendezvous_timeout", float("inf")),
    ("peer_timeout", float("nan")),
    ("peer_timeout", 0.2),
])
def test_the_python_api_refuses_a_bad_duration(field, value):
    with pytest.raises(InputError) as caught:
        RuntimeRequest(preset="phi-4-mini-instruct", **{field: value})
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "٣", "1e6"])
def test_environment_only_durations_are_refused(value):
    from kaito_runtime.hub.timeouts import hub_timeout_s
    from kaito_runtime.weights.lock import lock_timeout_s

    with pytest.raises(InputError, match="KAITO_HUB_TIMEOUT"):
        hub_timeout_s({"KAITO_HUB_TIMEOUT": value})
    if value != "1e6":
        with pytest.raises(InputError, match="KAITO_WEIGHTS_LOCK_TIMEOUT"):
            lock_timeout_s(None, {"KAITO_WEIGHTS_LOCK_TIMEOUT": value})


# --- whole numbers from every source ----------------------------------------------------------------


@pytest.mark.parametrize("digits", OTHER_DIGITS)
@pytest.mark.parametrize("flag", ["tensor-parallel-size", "pipeline-parallel-size", "port", "max-model-len"])
def test_other_digits_in_pass_through_values_are_one_clear_refusal(digits, flag):
    result = invoke(*PLAN, "--", f"--{flag}", digits)
    assert result.exit_code == 2, result.output
    line = _one_error(result)
    assert flag in line


@pytest.mark.parametrize("digits", OTHER_DIGITS)
@pytest.mark.parametrize("variable", ["PET_NNODES", "NNODES", "KAITO_NNODES", "KAITO_NODE_RANK", "KAITO_MASTER_PORT"])
def test_other_digits_in_topology_variables_are_one_clear_refusal(digits, variable):
    value = f"{digits}:{digits}" if variable in ("PET_NNODES", "NNODES") else digits
    result = invoke(*PLAN, env={variable: value})
    assert result.exit_code == 2, result.output
    assert variable in _one_error(result)


@pytest.mark.parametrize("digits", OTHER_DIGITS)
@pytest.mark.parametrize("option", ["--nnodes", "--node-rank", "--master-port", "--max-model-len", "-tp", "-pp", "--port"])
def test_other_digits_in_number_options_are_refused(digits, option):
    result = invoke(*PLAN, option, digits)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("value", ["nan", "inf", "٠.٩"])
def test_gpu_memory_utilization_must_be_a_finite_ascii_fraction(value):
    result = invoke(*PLAN, "--gpu-memory-utilization", value)
    assert result.exit_code == 2, result.output


@pytest.mark.parametrize("value", ["nan", "inf", "٠.٩"])
def test_a_pass_through_gpu_memory_utilization_must_be_finite_ascii(value):
    result = invoke(*PLAN, "--", "--gpu-memory-utilization", value)
    assert result.exit_code == 2, result.output
    _one_error(result)


@pytest.mark.parametrize("text", ["٠-٣", "0-²", "①"])
def test_other_digits_in_a_core_list_are_refused(text):
    result = invoke(*PLAN, "--cpu", "--cpu-cores", text)
    assert result.exit_code == 2, result.output
    assert "--cpu-cores" in _one_error(result)


def test_the_timeouts_table_states_the_ranges_the_code_checks():
    """docs/operations.md's ranges are the ones kaito_runtime.numbers enforces."""
    from pathlib import Path

    from kaito_runtime import numbers

    ops = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    table = ops[ops.index("## Timeouts"):]
    rows = {line.split("|")[2].strip(): line.split("|")[3].strip() for line in table.splitlines() if line.startswith("| ")}

    def stated(allowed: numbers.DurationRange) -> str:
        if allowed.above:
            return f"above {allowed.minimum:g}, at most {allowed.maximum:g}"
        return f"{allowed.minimum:g} to {allowed.maximum:g}"

    expected = {
        "`KAITO_HUB_TIMEOUT` seconds without a byte": numbers.HUB_TIMEOUT,
        "`KAITO_WEIGHTS_LOCK_TIMEOUT` seconds without progress": numbers.WEIGHTS_LOCK_TIMEOUT,
        "`--ready-timeout` / `KAITO_READY_TIMEOUT`": numbers.READY_TIMEOUT,
        "`--rendezvous-timeout` / `KAITO_RENDEZVOUS_TIMEOUT`": numbers.RENDEZVOUS_TIMEOUT,
        "`--peer-timeout` / `KAITO_PEER_TIMEOUT`": numbers.PEER_TIMEOUT,
        "`--grace-period` / `KAITO_GRACE_PERIOD`": numbers.GRACE_PERIOD,
    }
    for bound, allowed in expected.items():
        assert rows.get(bound) == stated(allowed), (bound, rows.get(bound))


@pytest.mark.parametrize("count", ["٤", "４"])
def test_other_digits_in_a_gpu_count_are_refused(count):
    result = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", f"{count}xA100-80GB")
    assert result.exit_code == 2, result.output
    assert "--assume-gpus" in _one_error(result)


HUGE = "9" * 5000  # more digits than int() converts by default: a ValueError, once "unexpected"


def test_a_number_with_thousands_of_digits_is_refused_not_crashed():
    assert parse_int(HUGE) is None and parse_decimal(HUGE) is None


@pytest.mark.parametrize("args", [
    ["--port", HUGE], ["--nnodes", HUGE], ["--max-model-len", HUGE], ["--grace-period", HUGE],
    ["--", "--max-model-len", HUGE], ["--", "--tensor-parallel-size", HUGE], ["--", "--port", HUGE],
])
def test_a_huge_number_anywhere_is_one_short_refusal(args):
    result = invoke(*PLAN, *args)
    assert result.exit_code == 2, result.output[-2000:]
    assert "Traceback" not in result.output and "unexpected" not in result.output
    assert len(result.output) < 3000

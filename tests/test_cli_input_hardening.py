"""Bad values are refused before anything starts, from every source, and an override means the
same from every source (issue 10, defects 3, 5, 6, 7 and 10)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaito_runtime.cli import main
from tests.support.hardening import launcher_env, run_cli

PRESET = ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "4xH100"]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, output
    return lines[0]


# --- defect 5: type and range of the values the launcher interprets ------------------------------

BAD_VALUES = [
    ("tensor-parallel-size", "two"),
    ("tensor-parallel-size", "0"),
    ("pipeline-parallel-size", "1.5"),
    ("data-parallel-size", "-2"),
    ("gpu-memory-utilization", "7"),
    ("gpu-memory-utilization", "lots"),
    ("max-model-len", "-5"),
    ("max-model-len", "long"),
    ("port", "99999"),
    ("port", "http"),
    ("kv-cache-dtype", "bogus"),
]


@pytest.mark.parametrize("flag,value", BAD_VALUES)
def test_a_bad_value_in_the_config_file_is_refused_naming_the_file_and_the_value(tmp_path, flag, value):
    config = tmp_path / "inference_config.yaml"
    config.write_text(f"vllm:\n  {flag}: {value}\n")
    result = invoke(*PRESET, "--config", str(config))
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert str(config) in line and flag in line and value in line, line


@pytest.mark.parametrize("flag,value", BAD_VALUES)
@pytest.mark.parametrize("form", ["separate", "equals"])
def test_a_bad_pass_through_value_is_refused_naming_the_flag_and_the_value(flag, value, form):
    passed = [f"--{flag}", value] if form == "separate" else [f"--{flag}={value}"]
    result = invoke(*PRESET, "--", *passed)
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert "pass-through" in line and flag in line and value in line, line


def test_underscore_and_short_forms_are_checked_too():
    assert invoke(*PRESET, "--", "--tensor_parallel_size", "two").exit_code == 2
    assert invoke(*PRESET, "--", "-tp", "two").exit_code == 2
    assert invoke(*PRESET, "--", "-pp=x").exit_code == 2


@pytest.mark.parametrize("option,value", [("--kv-cache-dtype", "bogus"), ("-tp", "0"), ("--max-model-len", "0")])
def test_a_bad_option_value_is_refused(option, value):
    result = invoke(*PRESET, option, value)
    assert result.exit_code == 2, result.output
    assert value in result.output


@pytest.mark.parametrize("name,value", [("KAITO_KV_CACHE_DTYPE", "bogus"), ("KAITO_TENSOR_PARALLEL_SIZE", "0"), ("KAITO_PORT", "0")])
def test_a_bad_environment_value_is_refused(name, value):
    result = invoke(*PRESET, env={name: value})
    assert result.exit_code == 2, result.output


def test_unknown_flags_still_pass_through_untouched(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("vllm:\n  some-future-flag: anything\n")
    result = invoke(*PRESET, "-o", "json", "--config", str(config), "--", "--another-new-flag", "x y")
    assert result.exit_code == 0, result.output
    argv = json.loads(result.output)["vllm"]["argv"]
    assert "--some-future-flag" in argv and "--another-new-flag" in argv and "x y" in argv


def test_a_bad_config_value_stops_a_real_launch_before_the_weights_step(tiny_hub, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("vllm:\n  tensor-parallel-size: two\n")
    ran = run_cli(
        ["--model", "org/tiny-llama", "--weights-dir", str(tmp_path / "w"), "--config", str(config), "--cpu"],
        launcher_env({"HF_ENDPOINT": tiny_hub.url}, home=tmp_path),
    )
    assert ran.code == 2, ran.output
    assert tiny_hub.count(method="GET", path_contains=".safetensors") == 0
    assert not list((tmp_path / "w").rglob("*.safetensors*"))


# --- defect 6: a TP override means the same from every source -----------------------------------


def _plan_and_parallel_flags(result) -> tuple[dict, dict]:
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    plan = {k: payload["plan"][k] for k in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size",
                                             "gpu_memory_utilization", "max_model_len", "kv_cache_tokens")}
    argv = payload["vllm"]["argv"]
    flags = {}
    for i, token in enumerate(argv):
        if token.endswith("-parallel-size"):
            flags[token] = argv[i + 1]
    return plan, flags


@pytest.mark.parametrize("size", ["2", "4"])
def test_a_tp_override_from_the_config_or_pass_through_plans_like_the_option(tmp_path, size):
    config = tmp_path / "c.yaml"
    config.write_text(f"vllm:\n  tensor-parallel-size: {size}\n")
    by_option = _plan_and_parallel_flags(invoke(*PRESET, "-o", "json", "-tp", size))
    by_config = _plan_and_parallel_flags(invoke(*PRESET, "-o", "json", "--config", str(config)))
    by_pass_through = _plan_and_parallel_flags(invoke(*PRESET, "-o", "json", "--", "--tensor-parallel-size", size))
    by_equals = _plan_and_parallel_flags(invoke(*PRESET, "-o", "json", "--", f"--tensor-parallel-size={size}"))
    assert by_config[0] == by_option[0] == by_pass_through[0] == by_equals[0]
    plan, _ = by_option
    assert plan["tensor_parallel_size"] == int(size) and plan["data_parallel_size"] == 1
    for _, flags in (by_option, by_config, by_pass_through, by_equals):
        assert "--data-parallel-size" not in flags
        assert flags.get("--tensor-parallel-size", size) == size


def test_a_pass_through_tp_that_needs_more_gpus_than_the_node_has_does_not_fit():
    result = invoke(*PRESET, "--", "--tensor-parallel-size", "8")
    assert result.exit_code == 2, result.output


# --- defect 7: --assume-gpus is bounded ----------------------------------------------------------


@pytest.mark.parametrize("spec", ["17xH100", "9999xH100", "100000000000000000000xH100"])
def test_more_gpus_than_any_node_holds_are_refused(spec):
    result = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", spec)
    assert result.exit_code == 2, result.output
    assert "16" in _error_line(result.output)


def test_the_largest_real_node_still_plans():
    assert invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "16xH100").exit_code == 0


# --- defect 3: credentials in HF_ENDPOINT --------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credentials_in_hf_endpoint_are_never_shown(tmp_path, log_format):
    port = _closed_port()
    ran = run_cli(
        ["--model", "org/tiny", "--weights-dir", str(tmp_path / "w"), "--download-only", "--log-format", log_format],
        launcher_env({"HF_ENDPOINT": f"http://alice:s3cr3tPassw0rd@127.0.0.1:{port}", "KAITO_HUB_TIMEOUT": "2"}, home=tmp_path),
    )
    assert ran.code == 16, ran.output
    assert "s3cr3tPassw0rd" not in ran.output and "alice" not in ran.output, ran.output
    assert f"http://127.0.0.1:{port}" in ran.output


# --- defect 10: small leftovers ------------------------------------------------------------------


def test_a_newline_in_the_revision_is_shown_escaped_on_one_line(tmp_path):
    ran = run_cli(
        ["--model", "org/tiny", "--revision", "ma\nin", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}, home=tmp_path),
    )
    assert ran.code == 2, ran.output
    for line in ran.stderr.splitlines():
        assert line.startswith(("kaito-run: error:", "0", "1", "2")), ran.stderr  # no stray continuation line
    assert "ma\\nin" in _error_line(ran.stderr)


def test_an_unknown_commit_leaves_no_lock_file(hub, tmp_path):
    weights = tmp_path / "w"
    ran = run_cli(
        ["--model", "org/tiny", "--revision", "a" * 40, "--weights-dir", str(weights), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 15, ran.output
    assert not list(weights.rglob("*.lock")), list(weights.rglob("*"))

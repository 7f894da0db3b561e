"""Bad input is refused before anything starts and shown safely (issue 10, defects 3, 7 and 10)."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from kaito_runtime.cli import main
from tests.support.hardening import launcher_env, run_cli

def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, output
    return lines[0]


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

"""`--log-format json`: every line the process writes is one JSON object, including the final error
with its exit code and the lines of libraries that log through their own handlers; text mode
writes each line once (issue 10, defect 4)."""

from __future__ import annotations

import json

import pytest

from tests.support.hardening import launcher_env, run_cli
from tests.support.ports import free_port


def _json_lines(text: str) -> list[dict]:
    objects = []
    for line in text.splitlines():
        if not line.strip():
            continue
        value = json.loads(line)  # raises on a plain-text line
        assert isinstance(value, dict), line
        objects.append(value)
    return objects


def test_json_mode_library_lines_are_json_too(hub, tmp_path):
    hub.drop_connection("org/big", "model.safetensors", after_bytes=3_000_000, times=1)
    ran = run_cli(
        ["--model", "org/big", "--weights-dir", str(tmp_path / "w"), "--download-only", "--log-format", "json"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 0, ran.output
    records = _json_lines(ran.stderr) + _json_lines(ran.stdout)
    library = [r for r in records if "Error while downloading" in r["message"]]
    assert len(library) == 1, records


def test_text_mode_writes_a_library_line_once(hub, tmp_path):
    hub.drop_connection("org/big", "model.safetensors", after_bytes=3_000_000, times=1)
    ran = run_cli(
        ["--model", "org/big", "--weights-dir", str(tmp_path / "w"), "--download-only"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 0, ran.output
    assert ran.stderr.count("Error while downloading") == 1, ran.stderr
    assert ran.stderr.count("Trying to resume download") == 1, ran.stderr


def test_json_mode_final_error_is_json_with_its_exit_code(hub, tmp_path):
    ran = run_cli(
        ["--model", "org/no-such-repo", "--weights-dir", str(tmp_path / "w"), "--download-only", "--log-format", "json"],
        launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path),
    )
    assert ran.code == 14, ran.output
    records = _json_lines(ran.stderr)
    assert _json_lines(ran.stdout) == []
    final = records[-1]
    assert final["level"] == "error" and final["exit_code"] == 14
    assert "org/no-such-repo" in final["message"]
    assert "kaito-run: error:" not in ran.output


# --- vLLM's own lines, copied by the supervisor ---------------------------------------------------

# kaito-run with a stand-in vLLM: the installed-vLLM check answers with SCRIPT as the entry point,
# and everything else (plan, launch, supervisor, logs) is the real code.
_WITH_STAND_IN = r"""
import sys
from kaito_runtime.launch import vllm_install
stand_in = vllm_install.VllmInstall("0.32.0", False, (sys.executable, sys.argv[1]), True)
vllm_install.detect_vllm = lambda *a, **k: stand_in
from kaito_runtime.cli import main
main(sys.argv[2:], prog_name="kaito-run")
"""

# Prints what vLLM prints (levelled lines, a line carrying the API key it was given, a plain
# line, a progress bar redrawn with \r), then fails.
_STAND_IN_VLLM = r"""
import os, sys
print("INFO 01-02 03:04:05 [api_server.py:1] vLLM API server version 0.32.0", flush=True)
print("(EngineCore_DP0 pid=7) WARNING 01-02 03:04:05 [core.py:2] few blocks", flush=True)
print("key is " + os.environ["VLLM_API_KEY"], file=sys.stderr, flush=True)
print("a plain line", flush=True)
print("Loading 10%\rLoading 100%", flush=True)
print("ERROR 01-02 03:04:06 [core.py:3] Engine core initialization failed", file=sys.stderr, flush=True)
sys.exit(3)
"""


def _run_with_stand_in(tmp_path, *args: str):
    import subprocess
    import sys

    from tests.support.hardening import REPO, Ran

    script = tmp_path / "stand_in_vllm.py"
    script.write_text(_STAND_IN_VLLM)
    argv = ["--model", str(REPO / "models" / "tiny-llama"), "--assume-gpus", "1xA100-80GB", "--host", "127.0.0.1",
            "--port", str(free_port()), "--weights-dir", str(tmp_path / "w"), *args]
    done = subprocess.run([sys.executable, "-c", _WITH_STAND_IN, str(script), *argv],
                          env=launcher_env(home=tmp_path), capture_output=True, timeout=60)
    return Ran(done.returncode, done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace"))


def test_json_mode_wraps_each_vllm_line_as_an_object_and_redacts_it(tmp_path):
    key = "sk-stand-in-secret-key-0123"
    ran = _run_with_stand_in(tmp_path, "--log-format", "json", "--", "--api-key", key)
    assert ran.code == 3, ran.output
    records = _json_lines(ran.stdout) + _json_lines(ran.stderr)  # raises on any plain line
    vllm = [r for r in records if r.get("source") == "vllm"]
    assert [r["message"] for r in vllm] == [
        "INFO 01-02 03:04:05 [api_server.py:1] vLLM API server version 0.32.0",
        "(EngineCore_DP0 pid=7) WARNING 01-02 03:04:05 [core.py:2] few blocks",
        "key is ***",
        "a plain line",
        "Loading 100%",
        "ERROR 01-02 03:04:06 [core.py:3] Engine core initialization failed",
    ], vllm
    assert [r["level"] for r in vllm] == ["info", "warning", "info", "info", "info", "error"]
    assert key not in ran.output
    # our own lines around them are JSON too: the start line and the failure report
    assert any(r.get("logger", "").startswith("kaito_runtime") and "starting vLLM" in r["message"] for r in records)


def test_text_mode_copies_vllm_lines_as_they_are(tmp_path):
    key = "sk-stand-in-secret-key-0123"
    ran = _run_with_stand_in(tmp_path, "--", "--api-key", key)
    assert ran.code == 3, ran.output
    assert "INFO 01-02 03:04:05 [api_server.py:1] vLLM API server version 0.32.0\n" in ran.stdout
    assert "a plain line\n" in ran.stdout and "Loading 10%\rLoading 100%\n" in ran.stdout
    assert '"source"' not in ran.output and key not in ran.output


# --- usage errors (found by the option parser, before any logging is set up) ---------------------

_USAGE_ERRORS = {
    "unknown option": (["--no-such-option", "--log-format", "json"], {}, "--no-such-option"),
    "bad value": (["--port", "abc", "--log-format=json"], {}, "'abc'"),
    "out of range": (["--log-format", "json", "--port", "99999"], {}, "99999"),
    "stray word": (["--log-format", "json", "stray"], {}, "stray"),
    "doctor, unknown option": (["doctor", "--log-format", "json", "--bogus"], {}, "--bogus"),
    "from the environment": (["--port", "abc"], {"KAITO_LOG_FORMAT": "json"}, "'abc'"),
}


@pytest.mark.parametrize("case", sorted(_USAGE_ERRORS))
def test_json_mode_usage_error_is_one_json_object_with_exit_code_2(tmp_path, case):
    args, env, named = _USAGE_ERRORS[case]
    ran = run_cli(args, launcher_env(env, home=tmp_path))
    assert ran.code == 2, ran.output
    assert ran.stdout == ""
    [record] = _json_lines(ran.stderr)  # one line, and it is JSON
    assert record["level"] == "error" and record["exit_code"] == 2, record
    assert named in record["message"], record
    assert record["usage"].startswith("Usage: ") and "[OPTIONS]" in record["usage"], record
    assert "Error:" not in ran.stderr


def test_text_mode_usage_error_is_clicks_usage_text(tmp_path):
    ran = run_cli(["--port", "abc"], launcher_env(home=tmp_path))
    assert ran.code == 2
    assert ran.stderr.startswith("Usage: ") and "Error: Invalid value for '--port'" in ran.stderr
    # a --log-format json that comes after `--` belongs to vLLM and does not change ours
    ran = run_cli(["--port", "abc", "--", "--log-format", "json"], launcher_env(home=tmp_path))
    assert ran.code == 2 and ran.stderr.startswith("Usage: "), ran.stderr


def test_a_bad_log_format_is_reported_as_text(tmp_path):
    ran = run_cli(["--log-format", "yaml"], launcher_env({"KAITO_LOG_FORMAT": "json"}, home=tmp_path))
    assert ran.code == 2
    assert "Invalid value for '--log-format'" in ran.stderr and ran.stderr.startswith("Usage:")


# --- the command's own output (dry run, presets, doctor) in JSON log mode --------------------------

_DRY_RUN = ["--model", "models/tiny-llama", "--dry-run", "--assume-gpus", "1xA100-80GB"]


def _dry_run(tmp_path, *args: str, env=None):
    from tests.support.hardening import REPO

    argv = [str(REPO / a) if a == "models/tiny-llama" else a for a in _DRY_RUN]
    return run_cli([*argv, "--weights-dir", str(tmp_path / "w"), *args], launcher_env(env, home=tmp_path))


@pytest.mark.parametrize("how", [["--log-format", "json"], ["--log-format", "json", "-o", "json"]])
def test_json_mode_dry_run_prints_its_plan_as_one_json_line(tmp_path, how):
    ran = _dry_run(tmp_path, *how)
    assert ran.code == 0, ran.output
    [plan] = _json_lines(ran.stdout)  # the whole report on one line
    assert plan["fits"] is True and plan["model"]["name"] == "tiny-llama"
    _json_lines(ran.stderr)


def test_json_mode_explicit_text_report_stays_text_and_the_logs_stay_json(tmp_path):
    ran = _dry_run(tmp_path, "-o", "text", env={"KAITO_LOG_FORMAT": "json"})
    assert ran.code == 0, ran.output
    assert ran.stdout.startswith("Model     tiny-llama")
    _json_lines(ran.stderr)  # every log line is still JSON


def test_text_mode_keeps_the_indented_json_report(tmp_path):
    ran = _dry_run(tmp_path, "-o", "json")
    assert ran.code == 0, ran.output
    assert ran.stdout.startswith("{\n") and json.loads(ran.stdout)
    assert _dry_run(tmp_path).stdout.startswith("Model     tiny-llama")


def test_json_mode_presets_and_refusal_are_one_line(tmp_path):
    ran = run_cli(["--list-presets", "--log-format", "json"], launcher_env(home=tmp_path))
    assert ran.code == 0 and len(ran.stdout.splitlines()) == 1 and isinstance(json.loads(ran.stdout), list)
    ran = run_cli(["--preset", "llama-3.3-70b-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB",
                   "--log-format", "json"], launcher_env(home=tmp_path))
    assert ran.code == 2, ran.output
    [refusal] = _json_lines(ran.stdout)
    assert refusal["fits"] is False and "does not fit" in refusal["error"]
    _json_lines(ran.stderr)

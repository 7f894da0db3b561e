"""`--log-format json`: every line the process writes is one JSON object, including the final error
with its exit code and the lines of libraries that log through their own handlers; text mode
writes each line once (issue 10, defect 4)."""

from __future__ import annotations

import json

from tests.support.hardening import launcher_env, run_cli


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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_with_stand_in(tmp_path, *args: str):
    import subprocess
    import sys

    from tests.support.hardening import REPO, Ran

    script = tmp_path / "stand_in_vllm.py"
    script.write_text(_STAND_IN_VLLM)
    argv = ["--model", str(REPO / "models" / "tiny-llama"), "--assume-gpus", "1xA100-80GB", "--host", "127.0.0.1",
            "--port", str(_free_port()), "--weights-dir", str(tmp_path / "w"), *args]
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

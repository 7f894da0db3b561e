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

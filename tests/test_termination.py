"""The termination message facility (units): which file, which cause, one redacted line, once."""

from __future__ import annotations

import pytest

from kaito_runtime import termination
from kaito_runtime.secrets import register_secret


@pytest.fixture(autouse=True)
def fresh():
    termination._reset_for_tests()
    yield
    termination._reset_for_tests()


def test_the_first_cause_wins_and_the_line_names_the_exit_code(tmp_path):
    target = tmp_path / "termination-log"
    termination.configure(target, env={})
    termination.note_cause("rank 2 was lost: no heartbeat for 15 s", exit_code=22)
    termination.note_cause("vLLM stopped (exit 22)")
    assert termination.write(22) == target
    assert target.read_text() == "rank 2 was lost: no heartbeat for 15 s (exit 22)\n"


def test_replace_overrides_and_a_second_write_does_nothing(tmp_path):
    target = tmp_path / "t"
    termination.configure(target, env={})
    termination.note_cause("first")
    termination.note_cause("second", replace=True)
    termination.write(1)
    termination.write(0, "other")
    assert target.read_text() == "second (exit 1)\n"


def test_without_a_cause_the_fallback_or_exited(tmp_path):
    target = tmp_path / "t"
    termination.configure(target, env={})
    assert termination.message(3, "vLLM failed") == "vLLM failed (exit 3)"
    assert termination.message(0) == "exited (exit 0)"


def test_one_line_no_secret_and_at_most_4096_bytes(tmp_path):
    secret = "hf_TerminationSecret_4b8d2f6a1c"
    register_secret(secret)
    termination.configure(tmp_path / "t", env={})
    termination.note_cause(f"hub said\nno to {secret}\r\n" + "é" * 5000)
    line = termination.message(11)
    assert "\n" not in line and "\r" not in line and secret not in line
    assert len(line.encode()) <= termination.MAX_BYTES and line.endswith("...")


def test_the_file_comes_from_the_option_then_the_environment_then_the_default(tmp_path, monkeypatch):
    assert termination.configure(tmp_path / "opt", env={termination.ENV: str(tmp_path / "env")}) == tmp_path / "opt"
    assert termination.configure(None, env={termination.ENV: str(tmp_path / "env")}) == tmp_path / "env"
    assert termination.configure(None, env={termination.ENV: "none"}) is None
    assert termination.configure("", env={}) is None
    default = tmp_path / "dev-termination-log"
    monkeypatch.setattr(termination, "DEFAULT_PATH", default)
    assert termination.configure(None, env={}) is None  # the default only when it exists (the kubelet made it)
    default.write_text("")
    assert termination.configure(None, env={}) == default


def test_an_unwritable_file_is_skipped(tmp_path):
    termination.configure(tmp_path / "no-such-folder" / "t", env={})
    assert termination.write(1) is None


@pytest.mark.parametrize(("body", "code"), [(lambda: None, 0), (lambda: exit(4), 4), (lambda: 1 / 0, 1)])
def test_ending_writes_with_the_exit_code_the_process_will_have(tmp_path, body, code):
    target = tmp_path / "t"
    termination.configure(target, env={})
    try:
        with termination.ending():
            body()
    except (SystemExit, ZeroDivisionError):
        pass
    assert target.read_text().endswith(f"(exit {code})\n")

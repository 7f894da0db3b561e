"""A standby vLLM (launch/vllm_standby.py, supervisor.start_standby): started ahead with the next
start's command and environment, its imports done, paused; the supervisor adopts it in place of a
fresh start, or kills it. Tried with small Python programs in vLLM's place."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaito_runtime.launch.supervisor import STANDBY_SCRIPT, standby_program, start_standby, supervise

LOG = logging.getLogger("test_vllm_standby")

PROGRAM = """\
import multiprocessing, os, sys

def square(x, answers):
    answers.put(x * x)

if __name__ == "__main__":
    preloaded = "standby_preload" in sys.modules
    spawn = multiprocessing.get_context("spawn")  # as vLLM starts its engine core and workers
    answers = spawn.Queue()
    child = spawn.Process(target=square, args=(7, answers))
    child.start()
    print("program", sys.argv[1:], "preloaded" if preloaded else "cold", os.environ.get("MARK"),
          "child says", answers.get(timeout=60), flush=True)
    child.join()
    sys.exit(int(sys.argv[1]))
"""


@pytest.fixture
def program(tmp_path: Path) -> tuple[list[str], dict[str, str], Path]:
    """A program to start (exits with its first argument), its environment (a preload module on
    its path that notes its import in a file) and that file."""
    (tmp_path / "prog.py").write_text(PROGRAM)
    imported = tmp_path / "imported"
    (tmp_path / "standby_preload.py").write_text(f"open({str(imported)!r}, 'w').close()\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "MARK": "the-env"}
    return [sys.executable, str(tmp_path / "prog.py"), "3"], env, imported


def wait_for_file(path: Path, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_a_standby_imports_ahead_and_the_supervisor_starts_vllm_from_it(program, caplog) -> None:
    argv, env, imported = program
    caplog.set_level(logging.INFO, logger=LOG.name)
    standby = start_standby(argv, env, LOG, preload=("standby_preload",))
    assert standby is not None
    assert wait_for_file(imported)  # imported before anything asked it to start
    assert standby.proc.poll() is None  # and waiting
    result = supervise(argv, env, ready=None, grace_seconds=5.0, log=LOG, output=None, standby=standby)
    assert result.pid == standby.proc.pid
    assert result.exit_code == 3
    assert "program ['3'] preloaded the-env child says 49" in result.tail
    assert any("vLLM starts from its standby" in r.getMessage() for r in caplog.records)


def test_a_standby_for_another_command_is_killed_and_vllm_starts_afresh(program, caplog) -> None:
    argv, env, imported = program
    standby = start_standby(argv, env, LOG, preload=("standby_preload",))
    assert standby is not None
    other = [*argv[:2], "4"]
    result = supervise(other, env, ready=None, grace_seconds=5.0, log=LOG, output=None, standby=standby)
    assert result.exit_code == 4 and result.pid != standby.proc.pid
    assert "program ['4'] cold the-env child says 49" in result.tail
    assert standby.proc.returncode is not None  # killed, not left waiting
    assert any("cannot be used (the command or its environment changed)" in r.getMessage() for r in caplog.records)


def test_a_discarded_standby_is_killed_having_started_nothing(program, tmp_path: Path) -> None:
    argv, env, imported = program
    standby = start_standby(argv, env, LOG, preload=("standby_preload",))
    assert standby is not None and wait_for_file(imported)
    standby.discard()
    assert standby.proc.returncode == -9
    assert standby.proc.stdout is None or standby.proc.stdout.closed


def test_a_standby_whose_input_ends_exits_0_without_running_the_program(program) -> None:
    argv, env, _ = program
    done = subprocess.run([sys.executable, str(STANDBY_SCRIPT), "--", *argv[1:]], env=env, input=b"",
                          capture_output=True, timeout=60)
    assert done.returncode == 0 and b"program" not in done.stdout


def test_only_a_python_script_has_a_standby(tmp_path: Path) -> None:
    script = tmp_path / "vllm"
    script.write_text(f"#!{sys.executable}\nprint('hi')\n")
    assert standby_program([str(script), "serve", "m"]) == (sys.executable, [str(script), "serve", "m"])
    assert standby_program([sys.executable, "/x/vllm_cli.py", "serve"]) == (sys.executable, ["/x/vllm_cli.py", "serve"])
    (tmp_path / "sh").write_text("#!/bin/sh\necho hi\n")
    assert standby_program([str(tmp_path / "sh"), "serve"]) is None
    assert standby_program(["/no/such/program", "serve"]) is None
    assert standby_program([]) is None

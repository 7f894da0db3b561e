"""Signals through real vLLM on the CPU (issue 18, items 4 and 9).

User stories:
- Someone presses Ctrl-C on a serving kaito-run: vLLM stops (its own code is 0), kaito-run exits
  130 as docs/operations.md says, and nothing is left running.
- kaito-run itself is killed with SIGKILL (kill -9, the OOM killer): vLLM's API server, its engine
  core and everything else of its process group are gone within seconds and the port is free
  for the next start.

Two vLLM servers in all, from the repository's tiny local model (no hub).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_serve import GRACE_SECONDS, KAITO_RUN, READY_TIMEOUT, TINY_MODEL, base_env, free_port, wait_for_line
from tests.support.launcher_log import READY_LINE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _serve(tmp: Path) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    err = tmp / "stderr.log"
    argv = [str(KAITO_RUN), "--model", str(TINY_MODEL), "--host", "127.0.0.1", "--port", str(port),
            "--grace-period", str(GRACE_SECONDS), "--", "--max-model-len", "384"]
    with err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=base_env(tmp), stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp)
    wait_for_line(proc, err, READY_LINE, READY_TIMEOUT)
    return proc, port, err


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _alive(procs: list[psutil.Process]) -> list[str]:
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
        except psutil.NoSuchProcess:
            continue
    return left


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _port_freed(port: int, within_s: float = 5.0) -> str:
    """"" once ``port`` can be bound again (the kernel closes a killed process's sockets as it
    tears the process down, which can end a moment after the process is reaped); otherwise who
    still listens there."""
    deadline = time.monotonic() + within_s
    while not _port_free(port):
        if time.monotonic() > deadline:
            holders = [f"pid {c.pid} {c.status}" for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port]
            return f"port {port} still taken {within_s:g} s after every process died: {holders or 'no listed holder'}"
        time.sleep(0.1)
    return ""


def test_ctrl_c_on_a_serving_launcher_exits_130_and_leaves_nothing(tmp_path):
    proc, _, err = _serve(tmp_path)
    procs = _tree(proc.pid)
    try:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(GRACE_SECONDS + 10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err.read_text()[-3000:]
    time.sleep(0.5)
    assert not _alive(procs)


def test_sigkill_of_the_launcher_takes_vllms_whole_group_with_it(tmp_path):
    proc, port, err = _serve(tmp_path)
    procs = _tree(proc.pid)
    assert any("EngineCore" in " ".join(p.cmdline()) or p.name().startswith("VLLM::") for p in procs[1:]), \
        [" ".join(p.cmdline())[:60] for p in procs]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 10
    while _alive(procs[1:]) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _alive(procs[1:])
    for line in left:
        os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, f"outlived the SIGKILLed launcher: {left}\n{err.read_text()[-2000:]}"
    taken = _port_freed(port)
    assert not taken, taken

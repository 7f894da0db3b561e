"""Shared by the group's tests: free loopback ports and a helper process to freeze."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """p with p and p+1 free (vLLM's master port and the group store's port after it)."""
    candidates = (free_port() for _ in range(50))
    found = next((port for port in candidates if port < 65535 and _bindable(port + 1)), None)
    if found is None:
        raise RuntimeError("no free port pair")
    return found


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def helper_process(code: str, *args: str, ready: str) -> Iterator[subprocess.Popen]:
    """``python -c code args`` until it prints ``ready``; SIGKILLed (even if stopped) at the end."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == ready, line
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

"""Shared by the group's tests: port pairs, a helper process to freeze, two network namespaces."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.ci import missing
from tests.support.ports import free_port


def free_port_pair() -> int:
    """p with p and p+1 free (vLLM's master port and the group store's port after it)."""
    return free_port(span=2)


@contextlib.contextmanager
def helper_process(code: str, *args: str, ready: str, prefix: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """``python -c code args`` (after ``prefix``, e.g. ``ip netns exec NS``) until it prints
    ``ready``; SIGKILLed (even if stopped) at the end."""
    proc = subprocess.Popen([*prefix, sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == ready, line
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


class Namespaces:
    """Two network namespaces joined by a veth pair (10.211.<n>.1 and .2), as two hosts; cut()
    takes the link down, so packets vanish (no reset), as on a cut cable or a partition."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}"
        self.names = (f"kt{tag}a", f"kt{tag}b")
        self.links = (f"kt{tag}va", f"kt{tag}vb")
        subnet = 1 + os.getpid() % 250
        self.ips = (f"10.211.{subnet}.1", f"10.211.{subnet}.2")
        steps = [["ip", "netns", "add", self.names[0]], ["ip", "netns", "add", self.names[1]],
                 ["ip", "link", "add", self.links[0], "type", "veth", "peer", "name", self.links[1]]]
        for ns, link, ip in zip(self.names, self.links, self.ips):
            steps += [["ip", "link", "set", link, "netns", ns], ["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", link],
                      ["ip", "-n", ns, "link", "set", link, "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
        try:
            for step in steps:
                subprocess.run(step, check=True, capture_output=True, text=True, timeout=30)
        except subprocess.CalledProcessError as exc:
            self.remove()
            raise RuntimeError(f"{' '.join(exc.cmd)}: {exc.stderr.strip()}") from None

    def prefix(self, rank: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[rank]]

    def cut(self) -> None:
        subprocess.run(["ip", "-n", self.names[0], "link", "set", self.links[0], "down"], check=True, timeout=30)

    def remove(self) -> None:
        for ns in self.names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def namespaces_or_skip() -> Namespaces:
    why = ("needs root" if os.geteuid() != 0 else "needs the ip command (iproute2)" if shutil.which("ip") is None else "")
    if not why:
        try:
            return Namespaces()
        except (RuntimeError, OSError) as exc:
            why = f"cannot make network namespaces here: {exc}"
    missing(f"the network cut test {why}")

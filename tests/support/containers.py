"""Helpers of the container tests: find or build the image with scripts/build-image.sh (cached by
a hash of its inputs), and run podman with the project's store and settings (scripts/podman.sh).

Where podman/buildah (or root, which the image store and debootstrap need) are missing, the tests
skip with one line; under CI (CI=true) that, or a failed build, is a failure instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.ci import in_ci

REPO = Path(__file__).resolve().parent.parent.parent
PODMAN = REPO / "scripts" / "podman.sh"
BUILD = REPO / "scripts" / "build-image.sh"
TOOLS = ("podman", "buildah", "runc")
BUILD_TIMEOUT_S = 3600  # a first build downloads vLLM, torch and their dependencies


def unavailable(reason: str) -> None:
    """Skip with one line, or fail under CI."""
    if in_ci():
        pytest.fail(f"CI=true and the container tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        unavailable(f"{', '.join(missing)} not installed (scripts/test-deps.sh installs them as root)")
    if os.geteuid() != 0:
        unavailable("the container tests run podman as root (the image store, the debootstrap base)")


def podman(*args: str, timeout: float = 120, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(PODMAN), *args], capture_output=True, text=True, timeout=timeout, input=input)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done


@dataclass(frozen=True)
class Built:
    tag: str
    image_id: str
    output: str


def build(variant: str) -> Built:
    """The image of ``variant`` for the current sources: built, or found in the cache."""
    check_tools()
    done = subprocess.run(["bash", str(BUILD), variant], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    if done.returncode != 0:
        unavailable(f"scripts/build-image.sh {variant} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    tag = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("image:"))
    image_id = next(line.split()[-1] for line in done.stdout.splitlines() if line.startswith("image id:"))
    return Built(tag, image_id, done.stdout)


def present_variants() -> list[str]:
    """The variants whose image (tag localhost/kaito-runtime:<variant>) is in the store."""
    if any(shutil.which(tool) is None for tool in TOOLS) or os.geteuid() != 0:
        return []
    done = podman("images", "--format", "{{.Repository}}:{{.Tag}}", check=False)
    names = set(done.stdout.split())
    return [v for v in ("cpu", "cuda") if f"localhost/kaito-runtime:{v}" in names]


def inspect_image(tag: str) -> dict:
    return json.loads(podman("image", "inspect", tag).stdout)[0]


def http(url: str, body: dict | None = None, timeout: float = 10) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode("utf-8", "replace")
    except OSError as error:
        return 0, str(error)


def chat(port: int, max_tokens: int = 8, timeout: float = 180) -> dict:
    status, text = http(f"http://127.0.0.1:{port}/v1/chat/completions",
                        {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}],
                         "max_tokens": max_tokens}, timeout=timeout)
    assert status == 200, (status, text[-2000:])
    return json.loads(text)


class Container:
    """A detached podman container on the host network, removed (with its volumes) by close()."""

    def __init__(self, name: str, image: str, args: list[str], *, port: int, options: list[str] = ()) -> None:
        self.name = name
        self.port = port
        podman("rm", "--force", "--volumes", name, check=False)
        podman("run", "--detach", "--name", name, "--network", "host", *options, image, *args)

    def state(self) -> dict:
        """podman's record of the container. While the container's last process exits, podman 4.3's
        inspect can fail on its way through /proc (``read /proc/N/cgroup: no such process``): asked again."""
        for _ in range(10):
            done = podman("inspect", "--format", "{{json .State}}", self.name, check=False)
            if done.returncode == 0 or "no such process" not in done.stderr:
                break
            time.sleep(0.5)
        if done.returncode != 0:
            raise AssertionError(f"podman inspect {self.name} exited {done.returncode}: {done.stderr[-2000:]}")
        return json.loads(done.stdout)

    def running(self) -> bool:
        return bool(self.state().get("Running"))

    def logs(self) -> str:
        done = podman("logs", self.name, check=False, timeout=60)
        return done.stdout + done.stderr

    def exec(self, *argv: str, timeout: float = 120, options: list[str] = ()) -> subprocess.CompletedProcess:
        return podman("exec", *options, self.name, *argv, timeout=timeout, check=False)

    def wait_ready(self, timeout: float, *, path: str = "/v1/models") -> float:
        """Seconds until GET ``path`` answers 200; fails early when the container exits."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if http(f"http://127.0.0.1:{self.port}{path}", timeout=5)[0] == 200:
                return time.monotonic() - started
            if not self.running():
                pytest.fail(f"container {self.name} exited {self.state().get('ExitCode')} before it was ready:\n"
                            f"{self.logs()[-5000:]}")
            time.sleep(1)
        pytest.fail(f"container {self.name} not ready after {timeout} s:\n{self.logs()[-5000:]}")

    def wait_exit(self, timeout: float) -> int | None:
        """The exit code, or None when still running after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if not state.get("Running"):
                return int(state.get("ExitCode", -1))
            if time.monotonic() > deadline:
                return None
            time.sleep(0.5)

    def close(self) -> None:
        podman("rm", "--force", "--time", "5", "--volumes", self.name, check=False, timeout=120)

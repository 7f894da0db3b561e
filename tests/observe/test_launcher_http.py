"""The launcher's own HTTP, its log phase and its termination message, through a real `kaito-run`
process whose vLLM is the stand-in tests/support/fake_vllm.py (it binds and listens like vLLM
0.32: banner, bind, engine build while bound, listen). Everything else is real: options, the
hub emulator's throttled download, the supervisor, signals.

User stories:
- An operator watches a start-up: /startupz and /health answer in every phase, on the metrics
  port for the whole life and on the API port until vLLM takes it; then vLLM answers there.
- `kubectl describe pod` says why the pod ended: the model does not fit, the hub refused, vLLM
  failed to start, SIGTERM (during the download and while serving), a group member was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.hardening import launcher_env
from tests.support.ports import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "models" / "tiny-llama"
RUNNER = REPO / "tests" / "support" / "fake_vllm_run.py"
REPO_ID = "kaito-test/tiny-llama"
PHASES = ["starting", "resolve", "inventory", "plan", "weights", "group", "vllm_start", "ready", "stopping", "exited"]


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int | None, dict[str, str], bytes]:
    """(status, headers, body); status None when nothing answers (refused, reset)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (OSError, urllib.error.URLError):
        return None, {}, b""


@dataclass
class Seen:
    """One poll of both ports."""

    at: float
    startupz: dict | None
    startupz_code: int | None
    metrics_health: int | None
    api_health: int | None
    api_server: str  # "launcher", "vllm" or "" (nothing answered)
    api_phase: str | None


@dataclass
class Launcher:
    proc: subprocess.Popen
    port: int
    metrics_port: int
    tmp: Path
    stderr: Path
    stdout: Path
    termination: Path
    polls: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def poll_in_background(self, interval: float = 0.05) -> None:
        def loop() -> None:
            while not self._stop.is_set():
                code, _, body = get(self.metrics_port, "/startupz")
                health = get(self.metrics_port, "/health")[0]
                api_code, api_headers, _ = get(self.port, "/health")
                server = ""
                if api_code is not None:  # the launcher names its phase in every answer, vLLM does not
                    server = "launcher" if "X-Kaito-Phase" in api_headers else "vllm"
                self.polls.append(Seen(time.monotonic(), json.loads(body) if body else None, code, health, api_code,
                                       server, api_headers.get("X-Kaito-Phase")))
                self._stop.wait(interval)

        threading.Thread(target=loop, daemon=True).start()

    def stop_polling(self) -> None:
        self._stop.set()

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None:
                pytest.fail(f"kaito-run exited {self.proc.returncode} before {what}:\n{self.stderr.read_text()[-3000:]}")
            time.sleep(0.05)
        pytest.fail(f"not {what} after {timeout} s:\n{self.stderr.read_text()[-3000:]}")

    def finish(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop_polling()

    def message(self) -> str:
        return self.termination.read_text() if self.termination.exists() else ""


def start(tmp: Path, *args: str, env: dict[str, str] | None = None, metrics: bool = True) -> Launcher:
    port, metrics_port = free_port(), free_port()
    termination = tmp / "termination-log"
    full = launcher_env({"KAITO_TERMINATION_LOG": str(termination), "PYTHONUNBUFFERED": "1", **(env or {})}, home=tmp)
    stdout, stderr = tmp / "stdout.log", tmp / "stderr.log"
    argv = [sys.executable, str(RUNNER), "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port if metrics else 0), "--weights-dir", str(tmp / "weights"),
            "--grace-period", "5", *args]
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(argv, env=full, stdout=out, stderr=err, cwd=tmp)
    return Launcher(proc, port, metrics_port, tmp, stderr, stdout, termination)


@pytest.fixture
def slow_hub(tmp_path_factory):
    """The tiny model (1.6 MB) on the hub emulator at 400 kB/s: a download of about 4 s."""
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("observe-hub")
    shutil.copytree(TINY_MODEL, root / REPO_ID)
    emulator = HubEmulator(root, lfs_threshold=100_000)
    emulator.rate_limit_bps = 400_000
    with emulator:
        yield emulator


def test_every_phase_is_watched_on_both_ports_and_the_api_port_passes_to_vllm(tmp_path, slow_hub):
    run = start(tmp_path, "--model", REPO_ID, "--log-format", "json",
                env={"HF_ENDPOINT": slow_hub.url, "FAKE_VLLM_IMPORT_S": "1.0", "FAKE_VLLM_ENGINE_S": "1.5"})
    run.poll_in_background()
    try:
        run.wait_for(lambda: any(p.startupz_code == 200 for p in run.polls), 120, "ready")
        run.wait_for(lambda: any(p.api_server == "vllm" and p.api_health == 200 for p in run.polls), 30, "vLLM on the API port")
        ready = get(run.metrics_port, "/startupz")
        assert ready[0] == 200 and get(run.metrics_port, "/health")[0] == 200
    finally:
        run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0
    polls = [p for p in run.polls if p.startupz is not None]
    phases = [p.startupz["phase"] for p in polls]
    assert {"weights", "vllm_start", "ready"} <= set(phases), phases
    # the download is watched: remaining seconds known and falling, KAITO's -1 before
    remaining = [p.startupz["progress"]["weights"]["remaining_seconds"] for p in polls if p.startupz["phase"] == "weights"]
    known = [r for r in remaining if r >= 0]
    assert len(known) >= 3 and known[-1] < known[0], remaining
    # before ready: 503 everywhere, the API port's answer names the phase
    for p in polls:
        if p.startupz["phase"] in ("weights", "plan", "resolve", "inventory"):
            assert p.startupz_code == 503 and p.metrics_health == 503
            if p.api_server == "launcher":
                # polled a moment after /startupz: the same phase or the next
                assert p.api_health == 503 and p.api_phase in PHASES[PHASES.index(p.startupz["phase"]):][:2]
    weights_polls = [p for p in polls if p.startupz["phase"] == "weights"]
    # vLLM never answers there during the download; the launcher does (a poll may go unanswered on
    # a loaded machine, or land a moment later, after the launcher moved on)
    assert weights_polls and not any(p.api_server == "vllm" for p in weights_polls)
    assert any(p.api_server == "launcher" and p.api_health == 503 and p.api_phase == "weights" for p in weights_polls)
    # the API port: the launcher, then nothing (vLLM bound, not listening), then vLLM; never back
    order = [p.api_server for p in run.polls]
    first_vllm = order.index("vllm")
    assert "launcher" not in order[first_vllm:]
    assert "launcher" in order[:first_vllm]
    # every phase duration recorded once ready
    durations = ready[2] and json.loads(ready[2])["phases"]
    assert set(durations) == {"resolve", "inventory", "plan", "weights", "vllm_start"}
    assert durations["weights"] > 2.0  # 1.6 MB at 400 kB/s
    # JSON log lines carry the phase
    lines = [json.loads(line) for line in run.stderr.read_text().splitlines() if line.startswith("{")]
    by_phase = {line.get("phase") for line in lines}
    assert {"weights", "vllm_start", "ready"} <= by_phase, by_phase
    vllm_lines = [json.loads(line) for line in run.stdout.read_text().splitlines() if line.startswith("{")]
    assert any(line.get("source") == "vllm" and line.get("phase") == "vllm_start" for line in vllm_lines)
    assert "stopped by SIGTERM" in run.message() and run.message().endswith("(exit 0)\n")


def test_vllm_that_binds_before_the_launcher_lets_go_is_started_once_more(tmp_path):
    log = tmp_path / "fake-vllm.log"
    run = start(tmp_path, "--model", str(TINY_MODEL),
                env={"FAKE_VLLM_BIND_FIRST": "1", "FAKE_VLLM_LOG": str(log), "FAKE_VLLM_IMPORT_S": "0.2"})
    try:
        run.wait_for(lambda: get(run.metrics_port, "/startupz")[0] == 200, 60, "ready")
        assert get(run.port, "/health")[0] == 200
        exits = get(run.metrics_port, "/metrics")[2].decode()
    finally:
        run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0
    assert log.read_text().split() == ["bind-failed", "98", "bind-ok"]
    assert "before the launcher had let go of it; starting it again" in run.stderr.read_text()
    assert 'kaito_launcher_vllm_exits_total{reason="failed"} 1.0' in exits


def test_without_startup_http_the_api_port_stays_free_until_vllm(tmp_path):
    run = start(tmp_path, "--model", str(TINY_MODEL), "--no-startup-http",
                env={"FAKE_VLLM_IMPORT_S": "1.5"})
    try:
        run.wait_for(lambda: get(run.metrics_port, "/startupz")[1].get("X-Kaito-Phase") == "vllm_start", 60, "vLLM start")
        assert get(run.port, "/health")[0] is None
        run.wait_for(lambda: get(run.metrics_port, "/startupz")[0] == 200, 60, "ready")
    finally:
        run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0


# --- why it ended --------------------------------------------------------------------------------


def test_termination_message_when_the_model_does_not_fit(tmp_path):
    run = start(tmp_path, "--preset", "llama-3.3-70b-instruct", "--cpu", env={"HF_HUB_OFFLINE": "1"})
    assert run.finish() == 2
    message = run.message()
    assert "does not fit" in message and message.endswith("(exit 2)\n") and message.count("\n") == 1


def test_termination_message_when_the_hub_refuses(tmp_path, slow_hub):
    run = start(tmp_path, "--model", "kaito-test/no-such-model", env={"HF_ENDPOINT": slow_hub.url})
    code = run.finish()
    assert code != 0
    message = run.message()
    assert "kaito-test/no-such-model" in message and message.endswith(f"(exit {code})\n"), message


def test_termination_message_when_vllm_fails_to_start(tmp_path):
    run = start(tmp_path, "--model", str(TINY_MODEL),
                env={"FAKE_VLLM_FAIL": "ValueError: --frobnicate is not a vLLM flag"})
    assert run.finish() == 1
    message = run.message()
    assert "vLLM" in message and "--frobnicate is not a vLLM flag" in message and message.endswith("(exit 1)\n"), message
    assert "\n" not in message.rstrip("\n")


def test_termination_message_when_sigterm_comes_during_the_download(tmp_path, slow_hub):
    slow_hub.rate_limit_bps = 50_000  # about 30 s: SIGTERM comes first
    run = start(tmp_path, "--model", REPO_ID, env={"HF_ENDPOINT": slow_hub.url})
    run.wait_for(lambda: get(run.metrics_port, "/startupz")[1].get("X-Kaito-Phase") == "weights", 60, "weights")
    run.wait_for(lambda: (json.loads(get(run.metrics_port, "/startupz")[2] or b"{}").get("progress", {})
                          .get("weights", {}).get("done_bytes") or 0) > 0, 30, "bytes")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 0
    message = run.message()
    assert message.startswith("received SIGTERM") and "weights" in message and message.endswith("(exit 0)\n"), message


@pytest.mark.timeout(240)
def test_termination_message_when_a_group_member_is_lost(tmp_path):
    """Two launchers on loopback (the fake vLLM's workers run headless); the worker's launcher
    is killed with SIGKILL: the leader stops its vLLM and says which member was lost."""
    master = free_port()
    common = ("--model", str(TINY_MODEL), "--nnodes", "2", "--leader-address", "127.0.0.1",
              "--master-port", str(master), "--peer-timeout", "3", "--max-restarts", "0")  # 0: the loss ends the group
    (tmp_path / "leader").mkdir()
    (tmp_path / "worker").mkdir()
    env = {"VLLM_HOST_IP": "127.0.0.1"}
    leader = start(tmp_path / "leader", *common, "--node-rank", "0", env=env)
    worker = start(tmp_path / "worker", *common, "--node-rank", "1", env=env)
    try:
        leader.wait_for(lambda: get(leader.metrics_port, "/startupz")[0] == 200, 180, "the leader ready")
        body = json.loads(get(leader.metrics_port, "/startupz")[2])
        assert body["progress"]["group"]["size"] == 2 and body["phases"].get("group", -1) >= 0
        worker.proc.send_signal(signal.SIGKILL)
        code = leader.finish(60)
    finally:
        for run in (leader, worker):
            if run.proc.poll() is None:
                run.proc.kill()
        _kill_fake_vllms(tmp_path)
    assert code == 22, leader.stderr.read_text()[-2000:]
    message = leader.message()
    assert "lost" in message and message.endswith("(exit 22)\n"), message


def _kill_fake_vllms(tmp: Path) -> None:
    """The SIGKILLed worker launcher's headless fake vLLM got SIGTERM through its parent-death
    signal; wait for it (by its own pid), and end it if it is still there."""
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            if "fake_vllm.py" in " ".join(proc.info["cmdline"] or []) and str(tmp) in (proc.info["cwd"] or ""):
                proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.Error:
            continue

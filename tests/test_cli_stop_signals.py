"""SIGTERM and SIGINT in the weights step: the transfer stops, the partial bytes stay for the next
run, the lock is released, one line says what was kept, and the exit code is the one the README's
table gives for a graceful stop (issue 10, defect 8)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.hardening import launcher_env

GRACEFUL = {signal.SIGTERM: 0, signal.SIGINT: 130}


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kaito_runtime.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _partials(weights: Path) -> list[Path]:
    return [p for p in weights.rglob("*.part") if p.stat().st_size > 0]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_during_a_download_keeps_the_bytes_and_releases_the_lock(hub, tmp_path, sig):
    from filelock import FileLock

    weights = tmp_path / "w"
    hub.rate_limit_bps = 1_000_000
    env = launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path)
    proc = _start(["--model", "org/big", "--weights-dir", str(weights), "--download-only"], env)
    _wait_for(lambda: bool(_partials(weights)))
    time.sleep(0.5)
    proc.send_signal(sig)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    stderr = err.decode()
    assert proc.returncode == GRACEFUL[sig], stderr
    assert time.monotonic() - sent < 5
    stop_lines = [line for line in stderr.splitlines() if sig.name in line]
    assert len(stop_lines) == 1, stderr
    assert "kept" in stop_lines[0] and "weights" in stop_lines[0]
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    kept = _partials(weights)
    assert kept, list(weights.rglob("*"))
    kept_bytes = kept[0].stat().st_size
    for lock_file in weights.rglob("*.lock"):
        FileLock(str(lock_file)).acquire(timeout=0)  # released: taken at once

    hub.rate_limit_bps = None
    hub.clear_records()
    resumed = subprocess.run([sys.executable, "-m", "kaito_runtime.cli", "--model", "org/big", "--weights-dir",
                              str(weights), "--download-only"], env=env, capture_output=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr.decode()
    assert kept_bytes in hub.range_starts("model.safetensors") or any(s >= kept_bytes for s in hub.range_starts("model.safetensors"))


@pytest.mark.slow
def test_a_signal_while_waiting_for_another_launchers_lock_is_a_graceful_stop(hub, tmp_path):
    weights = tmp_path / "w"
    hub.rate_limit_bps = 200_000
    env = launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path)
    holder = _start(["--model", "org/big", "--weights-dir", str(weights), "--download-only"], env)
    try:
        _wait_for(lambda: bool(_partials(weights)))
        waiter = _start(["--model", "org/big", "--weights-dir", str(weights), "--download-only"], env)
        time.sleep(2.0)  # it is waiting for the lock now
        waiter.send_signal(signal.SIGTERM)
        _, err = waiter.communicate(timeout=30)
        assert waiter.returncode == 0, err.decode()
        lines = [line for line in err.decode().splitlines() if "SIGTERM" in line]
        assert len(lines) == 1, err.decode()
    finally:
        holder.kill()
        holder.communicate()


def test_the_exit_code_table_documents_the_graceful_codes():
    ops = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    table = ops[ops.index("## Exit codes"):ops.index("## Signals")]
    assert "SIGTERM in any step" in table and "| 130 |" in table
    assert "## Signals" in ops and "## Hub retries" in ops


# --- the quick paths: a dry run, --export-preset (issue 18, item 9) ---------------------------------


def _talks_to(pid: int, url: str) -> bool:
    """Whether process ``pid`` has a TCP connection open to the port of ``url`` (it waits for an answer)."""
    import psutil

    port = int(url.rsplit(":", 1)[1].strip("/"))
    try:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections("tcp"))
    except psutil.Error:
        return False


@pytest.mark.parametrize("mode", ["--dry-run", "--export-preset"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_in_a_quick_path_is_a_graceful_stop(hub, tmp_path, mode, sig):
    """The hub answers slowly, so the signal lands while the model is being resolved: the same
    one line and code as in every other step (0 / 130), no click "Aborted!", no 143."""
    hub.answer_delay_s = 30.0
    env = launcher_env({"HF_ENDPOINT": hub.url}, home=tmp_path)
    proc = _start(["--model", "org/tiny", mode, "--assume-gpus", "1xA100-80GB"], env)
    try:
        _wait_for(lambda: _talks_to(proc.pid, hub.url))
        time.sleep(0.2)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
    finally:
        hub.answer_delay_s = 0.0
        if proc.poll() is None:
            proc.kill()
    stderr = err.decode()
    assert proc.returncode == GRACEFUL[sig], stderr
    lines = [line for line in stderr.splitlines() if sig.name in line]
    assert len(lines) == 1 and "nothing was left running" in lines[0], stderr
    assert "Aborted!" not in stderr and "Traceback" not in stderr
    assert out == b""


@pytest.mark.parametrize("first,second", [(signal.SIGTERM, signal.SIGINT), (signal.SIGINT, signal.SIGTERM)],
                         ids=["TERM-INT", "INT-TERM"])
def test_a_second_signal_before_vllm_runs_exits_with_the_first_signals_code(monkeypatch, first, second):
    """Two signals sent together are handled in signal-number order by Python, so the handler is
    driven directly: the second one exits at once with the first one's graceful code."""
    import logging

    from kaito_runtime import cli
    from kaito_runtime.errors import StopRequested

    class Exited(Exception):
        pass

    def exit_now(code: int) -> None:
        raise Exited(code)

    monkeypatch.setattr(cli.os, "_exit", exit_now)
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    with cli._stop_on_signals():
        with pytest.raises(StopRequested) as stop:
            signal.getsignal(first)(first, None)
        with pytest.raises(Exited) as exited:
            signal.getsignal(second)(second, None)
    assert stop.value.exit_code == GRACEFUL[first]
    assert exited.value.args == (GRACEFUL[first],)

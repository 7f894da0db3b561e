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

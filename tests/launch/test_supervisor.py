"""The supervisor against a fake vLLM (tests/support/fake_vllm.py): readiness, signals, clean-up.

Signal tests run supervise() in a driver subprocess (its main thread owns the signal handlers)
and signal that process, as Kubernetes would signal kaito-run.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kaito_runtime.launch.failures import explain_failure
from kaito_runtime.launch.supervisor import (
    READY_TIMEOUT_EXIT_CODE,
    ReadinessCheck,
    SupervisorResult,
    supervise,
)
from tests.support.ports import free_port

FAKE = Path(__file__).parents[1] / "support" / "fake_vllm.py"
LOG = logging.getLogger("test_supervisor")

# Runs supervise() with the JSON spec in argv[1]; prints "READY <s>" when ready and the result
# as JSON on the last line.
DRIVER = r"""
import json, logging, signal, sys
from kaito_runtime.launch.supervisor import ReadinessCheck, supervise
logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s", stream=sys.stdout)
spec = json.loads(sys.argv[1])
def on_ready(seconds):
    print("READY", seconds, flush=True)
from kaito_runtime.launch.supervisor import StopRequest, SupervisorHooks
class Held(SupervisorHooks):  # a group's worker: holds SIGTERM until the group asks (a file appears)
    def holds(self, signum):
        return signum == signal.SIGTERM
    def stop_request(self):
        import os
        return StopRequest("the leader has drained", 0) if os.path.exists(spec["stop_file"]) else None
result = supervise(
    spec["argv"], spec["env"],
    ready=ReadinessCheck("127.0.0.1", spec["port"], "tiny", interval=0.05),
    grace_seconds=spec["grace"], on_ready=on_ready, log=logging.getLogger("driver"),
    hooks=Held() if spec.get("stop_file") else None,
)
print("RESULT " + json.dumps({
    "exit_code": result.exit_code, "ready_after": result.ready_after,
    "signal": result.signal_received, "outcome": result.outcome, "pid": result.pid,
    "handler_restored": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL,
}), flush=True)
"""


def fake_argv(port: int, *extra: str) -> list[str]:
    return [sys.executable, str(FAKE), "--port", str(port), *extra]


def run_inline(port: int, *extra: str, **kwargs) -> SupervisorResult:
    kwargs.setdefault("ready", ReadinessCheck("127.0.0.1", port, "tiny", interval=0.05))
    kwargs.setdefault("grace_seconds", 2.0)
    return supervise(fake_argv(port, *extra), dict(os.environ), log=LOG, output=None, **kwargs)


class Driver:
    """supervise() in a subprocess that the test can signal."""

    def __init__(self, port: int, *extra: str, grace: float = 5.0, stop_file: Path | None = None) -> None:
        spec = {"argv": fake_argv(port, *extra), "env": dict(os.environ), "port": port, "grace": grace,
                "stop_file": str(stop_file) if stop_file else None}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DRIVER, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no {prefix!r} line; output:\n{''.join(self.lines)}")

    def result(self) -> dict:
        line = self.wait_for("RESULT ")
        self.proc.wait(timeout=10)
        return json.loads(line.split(" ", 1)[1])

    def child_pid(self) -> int:
        for line in self.lines:
            if "fake-vllm: starting pid" in line:
                return int(line.rsplit(" ", 1)[1])
        raise AssertionError("child pid not seen")


def assert_gone(pid: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                pass
        except psutil.NoSuchProcess:
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still exists")


def group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return members


# --- readiness ----------------------------------------------------------------------------------


def _record_then_stop_the_fake(seen: list[float]):
    """An on_ready callback that records the ready time, then ends the run by stopping the fake server."""

    def on_ready(seconds: float) -> None:
        seen.append(seconds)
        for proc in psutil.Process().children():
            if str(FAKE) in proc.cmdline():
                proc.terminate()

    return on_ready


@pytest.mark.slow
def test_ready_is_reported_after_the_server_answers_and_timing_includes_the_delay() -> None:
    seen: list[float] = []

    on_ready = _record_then_stop_the_fake(seen)

    t0 = time.monotonic()
    result = run_inline(free_port(), "--ready-delay", "0.6", on_ready=on_ready)
    elapsed = time.monotonic() - t0

    assert len(seen) == 1
    assert result.ready_after == pytest.approx(seen[0])
    assert 0.6 <= result.ready_after < elapsed
    assert result.exit_code == 0  # the fake's graceful stop
    assert result.outcome == "exited"
    assert any("Application startup complete" in line for line in result.tail)


@pytest.mark.slow
def test_a_healthy_server_whose_completions_fail_is_not_ready() -> None:
    port = free_port()
    check = ReadinessCheck("127.0.0.1", port, "tiny", interval=0.05)
    assert check.stage() == "health"  # nothing listening yet
    result = run_inline(port, "--completions-fail", ready=check, ready_timeout=1.5, grace_seconds=1.0)
    assert result.ready_after is None
    assert result.outcome == "ready_timeout"
    assert result.exit_code == READY_TIMEOUT_EXIT_CODE


def test_readiness_without_the_probe_request_accepts_health_and_models_only() -> None:
    port = free_port()
    proc = subprocess.Popen(fake_argv(port, "--completions-fail"), stdout=subprocess.DEVNULL)
    try:
        strict = ReadinessCheck("127.0.0.1", port, "tiny")
        lenient = ReadinessCheck("0.0.0.0", port, "tiny", probe_request=False)
        wrong_name = ReadinessCheck("127.0.0.1", port, "other", probe_request=False)
        deadline = time.monotonic() + 10
        while lenient.stage() != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lenient.base_url == f"http://127.0.0.1:{port}"
        assert lenient.stage() == "ready"
        assert strict.stage() == "request"
        assert wrong_name.stage() == "models"
    finally:
        proc.terminate()
        proc.wait()


def test_readiness_accepts_any_of_several_served_names() -> None:
    port = free_port()
    proc = subprocess.Popen(fake_argv(port, "--served-model-name", "foo", "bar"), stdout=subprocess.DEVNULL)
    try:
        # the completion must go to a listed name: the fake answers 404 for any other model
        several = ReadinessCheck("127.0.0.1", port, ("tiny", "bar"))
        single = ReadinessCheck("127.0.0.1", port, "foo")
        unlisted = ReadinessCheck("127.0.0.1", port, ("tiny", "other"))
        deadline = time.monotonic() + 10
        while several.stage() != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert several.served_names == ("tiny", "bar")
        assert several.stage() == "ready"
        assert single.served_names == ("foo",) and single.stage() == "ready"
        assert unlisted.stage() == "models"
    finally:
        proc.terminate()
        proc.wait()


# --- exits and failures -------------------------------------------------------------------------


def test_child_exit_code_is_returned_when_it_dies_before_ready() -> None:
    result = run_inline(free_port(), "--exit-code", "3")
    assert result.exit_code == 3
    assert result.ready_after is None
    assert result.signal_received is None
    assert result.tail[-1] == "fake-vllm: exiting with 3"


def test_a_vllm_exit_that_the_group_counts_as_part_of_its_stop_takes_the_groups_code() -> None:
    """A worker's headless vLLM that exits as its leader drains: the group, told of the exit,
    asks for the stop it was part of, and the launcher exits with that code, not vLLM's."""
    from kaito_runtime.launch.supervisor import StopRequest, SupervisorHooks

    class Group(SupervisorHooks):
        told: int | None = None

        def exited(self, returncode: int) -> None:
            self.told = returncode

        def stop_request(self) -> StopRequest | None:
            return StopRequest("rank 0 is stopping as asked", 0) if self.told is not None else None

    group = Group()
    result = run_inline(free_port(), "--exit-code", "3", hooks=group)
    assert group.told == 3 and result.exit_code == 0 and result.outcome == "group_stopped"
    assert run_inline(free_port(), "--exit-code", "3", hooks=SupervisorHooks()).exit_code == 3


def test_failure_tail_is_kept_and_explained() -> None:
    message = (
        "ERROR 11-26 17:00:01 [core.py:700] ValueError: To serve at least one request with the "
        "models's max seq len (32768), (4.00 GiB KV cache is needed, which is larger than the "
        "available KV cache memory (1.25 GiB). Based on the available memory, the estimated maximum "
        "model length is 10240. Try increasing `gpu_memory_utilization` or decreasing "
        "`max_model_len` when initializing the engine.\\n"
        "RuntimeError: Engine core initialization failed. See root cause above."
    )
    result = run_inline(free_port(), "--fail-with", message)
    assert result.exit_code == 1
    assert result.tail[-1].startswith("RuntimeError: Engine core initialization failed")
    explanation = explain_failure(result.tail)
    assert explanation is not None and explanation.cause == "kv-cache-too-small"
    assert "--max-model-len <= 10240" in explanation.summary


def test_missing_program_gives_127() -> None:
    result = supervise(["/nonexistent/vllm"], {}, ready=None, log=LOG, output=None)
    assert result.exit_code == 127


def test_output_is_streamed_unchanged(tmp_path: Path) -> None:
    out = (tmp_path / "out.txt").open("w")
    supervise(fake_argv(free_port(), "--exit-code", "0"), dict(os.environ), ready=None, log=LOG, output=out)
    out.close()
    text = (tmp_path / "out.txt").read_text()
    assert text.startswith("fake-vllm: starting pid ")
    assert "fake-vllm: exiting with 0\n" in text


def test_handlers_are_restored_after_an_inline_run() -> None:
    before = signal.getsignal(signal.SIGTERM)
    run_inline(free_port(), "--exit-code", "0")
    assert signal.getsignal(signal.SIGTERM) is before


# --- signals --------------------------------------------------------------------------------------


def test_sigterm_is_forwarded_and_a_graceful_stop_exits_0() -> None:
    driver = Driver(free_port())
    driver.wait_for("READY")
    driver.proc.send_signal(signal.SIGTERM)
    result = driver.result()
    assert result["signal"] == signal.SIGTERM
    assert result["exit_code"] == 0
    assert result["outcome"] == "stopped"
    assert result["handler_restored"]
    assert any("fake-vllm: shutting down" in line for line in driver.lines)
    assert_gone(result["pid"])
    # a normal stop says so at INFO and warns about nothing
    assert any(line.startswith("LOG INFO vLLM stopped in ") and "(exit 0)" in line for line in driver.lines)
    assert not [line for line in driver.lines if line.startswith("LOG WARNING")]


def test_child_killed_by_the_forwarded_signal_is_a_graceful_stop() -> None:
    # vLLM ended by the very signal we forwarded stopped as asked: SIGTERM's graceful code, 0
    driver = Driver(free_port(), "--die-on-sigterm")
    driver.wait_for("READY")
    driver.proc.send_signal(signal.SIGTERM)
    result = driver.result()
    assert result["exit_code"] == 0


def test_sigint_while_vllm_runs_exits_130_even_when_vllm_exits_0() -> None:
    """Issue 18 item 9: vLLM stops gracefully on SIGINT with exit 0; the launcher exits 130."""
    driver = Driver(free_port())
    driver.wait_for("READY")
    driver.proc.send_signal(signal.SIGINT)
    result = driver.result()
    assert result["signal"] == signal.SIGINT
    assert result["exit_code"] == 130
    assert_gone(result["pid"])


def test_a_held_sigterm_reaches_vllm_only_when_the_group_asks_and_the_stop_exits_0(tmp_path: Path) -> None:
    """A group's worker: its vLLM keeps running after SIGTERM until the leader has drained."""
    stop_file = tmp_path / "leader-drained"
    driver = Driver(free_port(), grace=30.0, stop_file=stop_file)
    driver.wait_for("READY")
    child = driver.child_pid()
    driver.proc.send_signal(signal.SIGTERM)
    driver.wait_for("LOG INFO received SIGTERM: vLLM keeps serving its group until the leader has drained")
    time.sleep(1.0)  # ten polls of the group: still held
    assert psutil.Process(child).status() != psutil.STATUS_ZOMBIE
    stop_file.touch()
    result = driver.result()
    assert result["exit_code"] == 0 and result["outcome"] == "group_stopped" and result["signal"] == signal.SIGTERM
    lines = "".join(driver.lines)
    assert lines.index("stopping vLLM: the leader has drained") < lines.index("fake-vllm: shutting down")
    assert_gone(child)


def test_a_held_sigterm_goes_to_vllm_by_itself_once_the_grace_period_less_the_margin_is_over(tmp_path: Path) -> None:
    driver = Driver(free_port(), grace=2.0, stop_file=tmp_path / "never")
    driver.wait_for("READY")
    driver.proc.send_signal(signal.SIGTERM)
    result = driver.result()
    assert result["exit_code"] == 0 and result["outcome"] == "stopped"
    lines = "".join(driver.lines)
    assert "at most 2 s; grace 2s" in lines  # 2 s less a quarter of it, rounded
    assert lines.index("the group's leader has not drained") < lines.index("fake-vllm: shutting down")
    assert_gone(result["pid"])


@pytest.mark.slow
def test_child_ignoring_sigterm_is_killed_after_the_grace_period() -> None:
    driver = Driver(free_port(), "--ignore-sigterm", grace=1.0)
    driver.wait_for("READY")
    t0 = time.monotonic()
    driver.proc.send_signal(signal.SIGTERM)
    result = driver.result()
    waited = time.monotonic() - t0
    assert result["exit_code"] == 128 + signal.SIGKILL
    assert 1.0 <= waited < 5.0
    assert_gone(result["pid"])


@pytest.mark.slow
@pytest.mark.parametrize("first,second,code", [
    (signal.SIGTERM, signal.SIGINT, 0),
    (signal.SIGTERM, signal.SIGTERM, 0),
    (signal.SIGINT, signal.SIGTERM, 130),
], ids=["TERM-INT", "TERM-TERM", "INT-TERM"])
def test_second_signal_kills_at_once_and_exits_with_the_first_signals_code(first, second, code) -> None:
    """Issue 18 item 9: a second signal while stopping exits at once with the same code (the
    graceful code of the first signal), not 137."""
    driver = Driver(free_port(), "--ignore-sigterm", "--ignore-sigint", grace=30.0)
    driver.wait_for("READY")
    child = driver.child_pid()
    t0 = time.monotonic()
    driver.proc.send_signal(first)
    time.sleep(0.3)
    driver.proc.send_signal(second)
    result = driver.result()
    assert result["exit_code"] == code
    assert time.monotonic() - t0 < 5.0
    assert_gone(child)


@pytest.mark.slow
def test_orphaned_grandchild_is_swept_and_no_process_of_the_group_survives(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    driver = Driver(free_port(), "--spawn-grandchild", str(pidfile), grace=1.0)
    driver.wait_for("READY")
    child = driver.child_pid()
    grandchild = int(pidfile.read_text())
    assert os.getpgid(grandchild) == child  # same group as the child (its session leader)
    driver.proc.send_signal(signal.SIGTERM)
    result = driver.result()
    assert result["exit_code"] == 0
    assert_gone(grandchild)
    assert_gone(child)
    assert group_members(child) == []
    # it ignored SIGTERM and had to be killed: that is worth a warning naming it
    swept = [line for line in driver.lines if "leftover process of vLLM's group" in line]
    assert len(swept) == 1 and swept[0].startswith("LOG WARNING cleaned up 1 leftover process")
    assert f"(pid {grandchild}, SIGKILL)" in swept[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_child_stops_when_the_launcher_itself_is_sigkilled() -> None:
    """kill -9 / the OOM killer on kaito-run: no cleanup code runs, the kernel must stop vLLM."""
    driver = Driver(free_port(), grace=1.0)
    driver.wait_for("READY")
    child = driver.child_pid()
    driver.proc.kill()
    driver.proc.wait(timeout=5)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                break  # exited; only waiting for its new parent to reap it
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError(f"vLLM stand-in {child} outlived its SIGKILLed launcher")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_sigkill_of_the_launcher_leaves_no_vllm_even_one_that_ignores_sigterm(tmp_path: Path) -> None:
    """Issue 18 item 4: docs/operations.md promises SIGKILL semantics. A vLLM (and a process it
    spawned, like an engine core) that ignores SIGTERM must not outlive a SIGKILLed launcher."""
    pidfile = tmp_path / "grandchild.pid"
    driver = Driver(free_port(), "--ignore-sigterm", "--spawn-grandchild", str(pidfile), grace=30.0)
    driver.wait_for("READY")
    child = driver.child_pid()
    grandchild = int(pidfile.read_text())
    driver.proc.kill()
    driver.proc.wait(timeout=5)
    survivors = [pid for pid in (child, grandchild) if not _gone_within(pid, 5.0)]
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert not survivors, f"{survivors} outlived the SIGKILLed launcher (child {child}, grandchild {grandchild})"


@pytest.mark.slow
def test_a_headless_worker_outlives_the_ready_timeout() -> None:
    # Multi-node workers (node rank > 0) serve no HTTP: ready=None, and the group's env gives
    # them the same KAITO_READY_TIMEOUT as the leader. It must not stop them.
    t0 = time.monotonic()
    result = supervise(
        [sys.executable, "-c", "import time; time.sleep(1.0)"], dict(os.environ),
        ready=None, ready_timeout=0.2, grace_seconds=1.0, log=LOG, output=None,
    )
    assert time.monotonic() - t0 >= 1.0
    assert result.outcome == "exited" and result.exit_code == 0


def test_readiness_sends_the_api_key_to_a_guarded_server() -> None:
    port = free_port()
    proc = subprocess.Popen(fake_argv(port, "--api-key", "sk-test"), stdout=subprocess.DEVNULL)
    try:
        keyed = ReadinessCheck("127.0.0.1", port, "tiny", api_key="sk-test")
        bare = ReadinessCheck("127.0.0.1", port, "tiny")
        wrong = ReadinessCheck("127.0.0.1", port, "tiny", api_key="sk-other")
        deadline = time.monotonic() + 10
        while keyed.stage() != "ready" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert keyed.stage() == "ready"
        assert bare.stage() == "models"  # /health is open, /v1/models answers 401
        assert wrong.stage() == "models"
        assert "sk-test" not in repr(keyed)
    finally:
        proc.terminate()
        proc.wait()


def test_supervise_becomes_ready_behind_an_api_key() -> None:
    # before the fix a guarded server never became ready and the ready timeout killed it
    port = free_port()
    seen: list[float] = []

    on_ready = _record_then_stop_the_fake(seen)

    check = ReadinessCheck("127.0.0.1", port, "tiny", interval=0.05, api_key="sk-test")
    result = run_inline(port, "--api-key", "sk-test", ready=check, ready_timeout=20.0, on_ready=on_ready)
    assert len(seen) == 1 and result.ready_after is not None
    assert result.outcome == "exited" and result.exit_code == 0


# --- what is left of the group after vLLM's main process exits ---------------------------------


def spawner(grandchild_code: str, argv0: str = "python3") -> list[str]:
    """A child that starts a grandchild (argv[0] ``argv0``), prints its pid and exits 0 at once,
    as vLLM's API server leaves its multiprocessing resource tracker behind for a moment."""
    code = (
        "import subprocess, sys\n"
        f"gc = subprocess.Popen([{argv0!r}, '-c', {grandchild_code!r}], executable=sys.executable,"
        " stdout=subprocess.DEVNULL)\n"
        "print('grandchild', gc.pid, flush=True)\n"
    )
    return [sys.executable, "-c", code]


def grandchild_pid(result: SupervisorResult) -> int:
    return int(next(line for line in result.tail if line.startswith("grandchild ")).split()[1])


def sweep_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "leftover" in r.getMessage()]


@pytest.mark.slow
def test_a_helper_that_exits_by_itself_soon_is_not_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    t0 = time.monotonic()
    result = supervise(spawner("import time; time.sleep(0.5)"), dict(os.environ), ready=None,
                       grace_seconds=10.0, log=LOG, output=None)
    elapsed = time.monotonic() - t0
    assert result.exit_code == 0
    assert 0.4 <= elapsed < 1.9  # waited for it, not the whole 2 s
    assert_gone(grandchild_pid(result))
    assert sweep_records(caplog) == []


@pytest.mark.slow
def test_a_helper_that_stays_is_stopped_and_named_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    t0 = time.monotonic()
    result = supervise(spawner("import time; time.sleep(60)"), dict(os.environ), ready=None,
                       grace_seconds=0.5, log=LOG, output=None)
    assert time.monotonic() - t0 < 3.0  # linger and SIGTERM wait are both capped by the grace
    pid = grandchild_pid(result)
    assert_gone(pid)
    [record] = sweep_records(caplog)
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert message.startswith("cleaned up 1 leftover process of vLLM's group after it exited: python3 -c ")
    assert message.endswith(f"(pid {pid})")


@pytest.mark.slow
def test_a_leftover_engine_core_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    # an orphaned VLLM::EngineCore holds GPU memory; even a clean SIGTERM of it is worth a warning
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    result = supervise(spawner("import time; time.sleep(60)", argv0="VLLM::EngineCore"), dict(os.environ),
                       ready=None, grace_seconds=0.5, log=LOG, output=None)
    pid = grandchild_pid(result)
    assert_gone(pid)
    [record] = sweep_records(caplog)
    assert record.levelno == logging.WARNING
    assert record.getMessage().endswith(f": VLLM::EngineCore (pid {pid})")


def test_resource_tracker_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from kaito_runtime.launch import supervisor

    class Proc:
        def __init__(self, pid: int) -> None:
            pass

        def cmdline(self) -> list[str]:
            return ["/usr/bin/python3", "-c", "from multiprocessing.resource_tracker import main;main(7)"]

        def name(self) -> str:
            return "python3"

    monkeypatch.setattr(supervisor.psutil, "Process", Proc)
    assert supervisor._describe_process(1) == "multiprocessing resource tracker"


def test_a_registered_secret_in_vllm_output_is_masked(tmp_path: Path) -> None:
    from kaito_runtime import secrets

    secret = "sk-child-prints-this-0123"
    secrets.register_secret(secret)
    out = (tmp_path / "out.txt").open("w")
    program = [sys.executable, "-c", f"print('key is {secret}'); print('plain line')"]
    result = supervise(program, dict(os.environ), ready=None, log=LOG, output=out)
    out.close()
    text = (tmp_path / "out.txt").read_text()
    assert result.exit_code == 0
    assert secret not in text and "key is ***\n" in text and "plain line\n" in text


def test_the_states_are_named_by_one_type_and_the_log_lines_use_them(caplog) -> None:
    """starting -> ready -> stopping -> exited, each change logged with the state's own name; a
    stop asked from outside (the group) goes through the same stopping state and sets the code."""
    from kaito_runtime.launch.supervisor import StopRequest, SupervisorHooks, SupervisorState

    assert [s.value for s in SupervisorState] == ["starting", "ready", "stopping", "exited"]
    caplog.set_level(logging.DEBUG, logger=LOG.name)
    asked: list[StopRequest] = []
    told: list[object] = []

    class Hooks(SupervisorHooks):
        def started(self, alive, pgid):
            told.append(("started", alive() and pgid > 0))

        def stop_request(self) -> StopRequest | None:
            return asked[0] if asked else None

        def exited(self, returncode: int) -> None:
            told.append(("exited", returncode))

    result = run_inline(free_port(), on_ready=lambda s: asked.append(StopRequest("rank 1 was lost", 22)),
                        hooks=Hooks())
    assert told[0] == ("started", True) and told[1][0] == "exited" and len(told) == 2
    changes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vLLM ") and " -> " in r.getMessage()]
    assert [c.split(" (")[0] for c in changes] == [
        "vLLM starting -> ready", "vLLM ready -> stopping", "vLLM stopping -> exited"]
    assert "rank 1 was lost" in changes[1]
    assert result.outcome == "group_stopped" and result.exit_code == 22


def test_the_watchdog_is_dismissed_after_a_normal_end_and_kills_nothing(tmp_path: Path) -> None:
    """The watchdog that kills vLLM's group when the launcher dies exits (and is reaped) when
    supervise() returns normally; a process the child left in another group is not its business."""
    before = {p.pid for p in psutil.Process().children()}
    result = run_inline(free_port(), "--exit-code", "0")
    assert result.exit_code == 0
    watchdogs = [p for p in psutil.Process().children() if p.pid not in before and "killpg" in " ".join(p.cmdline())]
    assert watchdogs == []


def test_the_watchdog_inherits_no_secret_from_the_launcher(monkeypatch):
    """The watchdog outlives nothing it needs the environment for: it must not hold the token."""
    from kaito_runtime.launch.supervisor import _Watchdog

    marker = "hf_watchdogMustNotSeeThis0123"
    monkeypatch.setenv("HF_TOKEN", marker)
    dog = _Watchdog(os.getpgid(0) + 10**7, logging.getLogger("test"))  # a group that does not exist
    try:
        assert dog.proc is not None
        deadline = time.monotonic() + 5
        while b"-c" not in Path(f"/proc/{dog.proc.pid}/cmdline").read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # until the watchdog has been exec'd: its own environment, not ours
        environ = Path(f"/proc/{dog.proc.pid}/environ").read_bytes()
        assert marker.encode() not in environ
    finally:
        dog.dismiss()
        dog.proc.wait(5)


class _LostGroup:
    """A group that lost a member: it asks for the stop at once and has nothing to drain."""

    def __init__(self, ask: bool) -> None:
        self.ask = ask

    def started(self, alive, pgid) -> None: ...
    def signalled(self, signum) -> None: ...
    def holds(self, signum) -> bool:
        return False
    def exited(self, returncode) -> None: ...
    def tick(self) -> None: ...
    def nothing_to_drain(self) -> bool:
        return True

    def stop_request(self):
        from kaito_runtime.launch.supervisor import StopRequest

        return StopRequest("rank 1 was lost", 22) if self.ask else None


TRAPS_SIGTERM = ("import pathlib, signal, sys, time\n"
                 "signal.signal(signal.SIGTERM, lambda *a: pathlib.Path(sys.argv[1]).write_text('TERM'))\n"
                 "print('up', flush=True)\n"
                 "while True: time.sleep(0.1)\n")


def test_a_group_that_lost_a_member_kills_vllm_at_once_without_a_drain(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    marker = tmp_path / "term"
    result = supervise([sys.executable, "-c", TRAPS_SIGTERM, str(marker)], dict(os.environ), ready=None,
                       grace_seconds=30.0, log=LOG, output=None, hooks=_LostGroup(ask=True))
    assert result.outcome == "group_stopped" and result.exit_code == 22
    assert not marker.exists()  # no SIGTERM: SIGKILL to the whole group at once
    assert any(r.getMessage().startswith("stopping vLLM at once: rank 1 was lost") for r in caplog.records)


def test_what_a_lost_groups_vllm_leaves_behind_is_killed_without_waiting(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger=LOG.name)
    marker = tmp_path / "term"
    code = (f"import subprocess, sys\n"
            f"gc = subprocess.Popen([sys.executable, '-c', {TRAPS_SIGTERM!r}, {str(marker)!r}], stdout=subprocess.PIPE)\n"
            "gc.stdout.readline()\n"  # the grandchild traps SIGTERM now
            "print('grandchild', gc.pid, flush=True)\n")
    result = supervise([sys.executable, "-c", code], dict(os.environ), ready=None, grace_seconds=30.0, log=LOG,
                       output=None, hooks=_LostGroup(ask=False))
    assert result.exit_code == 0
    assert_gone(grandchild_pid(result))
    assert not marker.exists()  # no linger, no SIGTERM and its patience: SIGKILL

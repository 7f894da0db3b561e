"""Run vLLM as a child process: stream its output, detect readiness, forward signals, clean up.

States (SupervisorState; the log lines name them): starting -> ready -> stopping -> exited.
``stopping`` is entered from ``starting`` or ``ready`` by a signal, a readiness deadline, or a
stop asked by the group (``SupervisorHooks.stop_request``; a multi-node peer was lost or asked
to stop).

* The child gets its own process group (``start_new_session``), so a signal and the final sweep
  reach every process vLLM spawned (API server, engine core, workers), including ones orphaned
  when their parent died: an orphaned ``VLLM::EngineCore`` keeps GPU memory and breaks the next
  start.
* SIGTERM / SIGINT sent to us are forwarded to vLLM's main process, which drains (its
  --shutdown-timeout) and stops its own children in order; after ``grace_seconds`` the group is
  SIGKILLed. A second signal SIGKILLs at once. A stop asked by a signal ends with the graceful
  code of the first signal (0 for SIGTERM, 130 for SIGINT: errors.GRACEFUL_STOP_EXIT_CODES) when
  vLLM exited 0 or by that signal, and always after a second signal; a vLLM that had to be killed
  at the end of the grace period gives 137, any other exit vLLM's own code.
* Once vLLM's main process has exited, what is left of its group gets up to 2 s to exit by
  itself (Python's multiprocessing resource tracker does once its pipe closes) before the sweep
  SIGTERMs, then SIGKILLs it; ``_Child.sweep`` says what is logged. A stop we forwarded ends
  with "vLLM stopped in N s (exit N)".
* Exit code (SupervisorResult.exit_code): after a signal, as above; otherwise the child's own
  code when it exited, 128+N when it was killed by signal N; READY_TIMEOUT_EXIT_CODE when it never became ready
  within ``ready_timeout`` and we stopped it. Without a readiness check (a headless multi-node
  worker serves no HTTP) there is nothing to wait for, so ``ready_timeout`` does not apply.
* Readiness is checked in a thread; ``on_ready`` is called from the calling thread.
* If we die without a chance to clean up (SIGKILL, the OOM killer), vLLM's whole process group
  is SIGKILLed, whatever it does with SIGTERM: a vLLM that ignores or hangs on SIGTERM would
  otherwise keep the port and the GPU memory, and the next start fails. Two parts make it so:
  the kernel sends the child SIGKILL (``PR_SET_PDEATHSIG``; tied to the thread that started it,
  so ``supervise`` keeps that thread waiting for as long as the child runs), and a watchdog
  process (``_Watchdog``, in a session of its own) holds the read end of a pipe only we write
  to: when we die the pipe closes and it SIGKILLs the group, so the engine core and workers an
  API server leaves behind go too. A normal end tells the watchdog to exit without killing.
"""

from __future__ import annotations

import ctypes
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Literal

import psutil

from kaito_runtime.errors import GRACEFUL_STOP_EXIT_CODES
from kaito_runtime.launch.kaito_serving import DRAIN_MARGIN_SECONDS
from kaito_runtime.secrets import redact

TAIL_LINES = 400  # enough to hold a vLLM traceback and the error line above it
READY_TIMEOUT_EXIT_CODE = 124  # as timeout(1): we gave up waiting and stopped the child
_POLL_SECONDS = 0.1
_SWEEP_SECONDS = 5.0  # how long leftovers of the group get after SIGTERM before SIGKILL
# how long helpers of the group get to exit by themselves once vLLM's main process has exited
_LINGER_SECONDS = 2.0

Outcome = Literal["exited", "stopped", "ready_timeout", "group_stopped"]


class SupervisorState(Enum):
    """Where a supervised vLLM is; the log lines use these names."""

    STARTING = "starting"  # started, not ready yet (a headless worker stays here: no HTTP)
    READY = "ready"  # the readiness check passed
    STOPPING = "stopping"  # we asked it to stop (signal, deadline, the group); kill at the deadline
    EXITED = "exited"  # its main process has exited


@dataclass(frozen=True)
class StopRequest:
    """A stop asked from outside the child and the signals: the group lost a member or was asked
    to stop. ``exit_code`` is what the launcher exits with once vLLM has stopped."""

    reason: str
    exit_code: int


class SupervisorHooks:
    """What a caller (the multi-node group, launch/group/) is told of and may ask while vLLM runs;
    the defaults do nothing. One object instead of a handful of callbacks."""

    def started(self, alive: Callable[[], bool], pgid: int) -> None:
        """vLLM's process exists; ``alive`` says whether its main process still runs; ``pgid``
        is the process group that holds vLLM and every process it started."""

    def signalled(self, signum: int) -> None:
        """SIGTERM/SIGINT arrived (called from the signal handler: set a flag, nothing more)."""

    def holds(self, signum: int) -> bool:
        """Whether the first ``signum`` is held instead of forwarded at once (a group's worker:
        its vLLM serves the leader's drain). A held signal reaches vLLM when ``stop_request``
        asks for a stop, or when the grace period less the drain margin has passed; the
        grace-period kill still counts from the signal. Called from the signal handler."""
        return False

    def stop_request(self) -> StopRequest | None:
        """Polled every 0.1 s while vLLM runs: a StopRequest stops vLLM as a signal would."""
        return None

    def exited(self, returncode: int) -> None:
        """vLLM's main process has exited; called at once, before its leftovers are swept (which
        can take seconds), so a group hears of the loss first and the clean-up comes after."""

    def nothing_to_drain(self) -> bool:
        """Whether vLLM can no longer finish anything (its group lost a member: the engine waits
        on a peer that is gone). Then a stop kills vLLM's whole process group at once instead of
        a SIGTERM and its drain, and what is left once vLLM's main process exited is killed
        without waiting for it to go by itself: the next round starts sooner."""
        return False

    def tick(self) -> None:
        """Called every 0.1 s from the supervising thread while vLLM runs, for work that must be
        done from that thread (a process started from another thread gets its parent-death
        signal when that thread ends)."""


@dataclass(frozen=True)
class ReadinessCheck:
    """When is the server ready: /health 200, a served name in /v1/models and (optionally)
    one real 1-token completion, because the CPU backend can report healthy and still fail.

    ``served_name``: one name, or every name vLLM serves the model under (``--served-model-name
    a b``, see VllmLaunch.served_model_names); any of them listed in /v1/models is enough.
    ``api_key``: the key vLLM guards /v1/* with (``--api-key`` or ``VLLM_API_KEY``, see
    VllmLaunch.api_key); sent as ``Authorization: Bearer`` on those requests.
    """

    host: str
    port: int
    served_name: str | tuple[str, ...]
    probe_request: bool = True
    interval: float = 0.5
    request_timeout: float = 60.0  # the first completion can be slow (seconds on CPU with TP)
    api_key: str | None = field(default=None, repr=False)

    @property
    def served_names(self) -> tuple[str, ...]:
        if isinstance(self.served_name, str):
            return (self.served_name,)
        return tuple(self.served_name)

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def _call(self, path: str, payload: dict | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body); HTTP errors are answers too. Raises OSError when nothing answers."""
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        if self.api_key and path.startswith("/v1/"):
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            self.base_url + path,
            data=json.dumps(payload).encode() if payload is not None else None,
            headers=headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    def stage(self) -> str:
        """The first check that does not pass yet ("health", "models", "request"), or "ready"."""
        try:
            status, _ = self._call("/health")
            if status != 200:
                return "health"
            status, body = self._call("/v1/models")
            listed = [name for name in self.served_names if name in _model_ids(body)] if status == 200 else []
            if not listed:
                return "models"
            if self.probe_request:
                payload = {"model": listed[0], "prompt": "ready?", "max_tokens": 1, "temperature": 0}
                status, body = self._call("/v1/completions", payload, timeout=self.request_timeout)
                if status != 200 or not _has_choices(body):
                    return "request"
        except OSError:  # refused, reset, timed out: not listening yet (or gone)
            return "health"
        return "ready"


def _model_ids(body: bytes) -> set[str]:
    try:
        return {entry.get("id") for entry in json.loads(body).get("data", [])}
    except (ValueError, AttributeError):
        return set()


def _has_choices(body: bytes) -> bool:
    try:
        return bool(json.loads(body).get("choices"))
    except (ValueError, AttributeError):
        return False


@dataclass(frozen=True)
class SupervisorResult:
    exit_code: int
    ready_after: float | None  # seconds from start to ready; None if never ready
    tail: tuple[str, ...]  # the child's last output lines
    signal_received: int | None  # the signal we got and forwarded (SIGTERM/SIGINT), if any
    outcome: Outcome = "exited"
    pid: int | None = None


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal(sig: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``sig`` to the child when we die; None where
    prctl is unavailable (not Linux). Everything is resolved here, before the fork: the function
    run in the child only calls prctl, getppid and kill."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    option, value, zero = ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(sig), ctypes.c_ulong(0)
    parent = os.getpid()
    getppid, kill, getpid = os.getppid, os.kill, os.getpid

    def set_parent_death_signal() -> None:
        prctl(option, value, zero, zero, zero)
        if getppid() != parent:  # the parent died before prctl: no signal would come
            kill(getpid(), sig)

    return set_parent_death_signal


# The watchdog: reads stdin (the pipe's read end) until we say goodbye ("x") or the pipe closes
# because we died; then it SIGKILLs the group. It ignores the signals a terminal or an
# orchestrator sends to a whole process tree, so that it outlives us.
_WATCHDOG = (
    "import os, signal, sys\n"
    "for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP): signal.signal(s, signal.SIG_IGN)\n"
    "try:\n    said = os.read(0, 1)\nexcept OSError:\n    said = b''\n"
    "if said != b'x':\n"
    "    try:\n        os.killpg(int(sys.argv[1]), signal.SIGKILL)\n    except OSError:\n        pass\n"
)


class _Watchdog:
    """SIGKILLs vLLM's process group when we die without cleaning up (see the module docstring)."""

    def __init__(self, pgid: int, log: logging.Logger) -> None:
        self.proc: subprocess.Popen | None = None
        self._write_fd: int | None = None
        read_fd, write_fd = os.pipe()  # both ends non-inheritable: no other child gets the write end
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WATCHDOG, str(pgid)],
                stdin=read_fd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
                env={},  # it needs nothing, and must not hold the launcher's token (HF_TOKEN) either
            )
            self._write_fd = write_fd
        except OSError as exc:
            os.close(write_fd)
            log.warning("cannot start the watchdog that stops vLLM if kaito-run is killed: %s", exc)
        finally:
            os.close(read_fd)

    def dismiss(self) -> None:
        """We are ending normally (vLLM's group has been stopped): the watchdog exits, kills nothing."""
        if self._write_fd is None:
            return
        try:
            os.write(self._write_fd, b"x")
        except OSError:
            pass
        os.close(self._write_fd)
        self._write_fd = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


STANDBY_SCRIPT = Path(__file__).with_name("vllm_standby.py")
# What a standby imports ahead: vLLM's command line and every module its main() imports before it
# parses the arguments (torch, vLLM and its server: most of the API server process's start).
STANDBY_PRELOAD = (
    "vllm.entrypoints.cli.main", "vllm.entrypoints.cli.serve", "vllm.entrypoints.cli.openai",
    "vllm.entrypoints.cli.launch", "vllm.entrypoints.cli.benchmark.main", "vllm.entrypoints.cli.collect_env",
    "vllm.entrypoints.cli.download_kernels", "vllm.entrypoints.cli.preload", "vllm.entrypoints.cli.run_batch",
    "vllm.entrypoints.cli.snapshot", "vllm.entrypoints.serve.utils.api_utils", "vllm.utils.argparse_utils",
)


class Standby:
    """A vLLM process started ahead of need (launch/vllm_standby.py): its imports done, paused
    before it starts anything, with the argv and environment of the next start. ``supervise``
    adopts it (``standby=``) when both still match; ``discard`` kills it."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], proc: subprocess.Popen, watchdog: _Watchdog) -> None:
        self.argv, self.env, self.proc, self.watchdog = tuple(argv), dict(env), proc, watchdog

    def unfit(self, argv: Sequence[str], env: Mapping[str, str]) -> str | None:
        """Why this standby cannot be the start of ``argv`` in ``env`` (None: it can)."""
        if self.proc.poll() is not None:
            return f"it had exited ({_describe_exit(self.proc.returncode)})"
        if tuple(argv) != self.argv or dict(env) != self.env:
            return "the command or its environment changed"
        return None

    def go(self) -> bool:
        """Let it start vLLM; False when it can no longer hear it."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except OSError:
            return False
        return True

    def discard(self) -> None:
        """Kill it (it holds nothing worth a graceful end) and its watchdog."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.watchdog.dismiss()


def standby_program(argv: Sequence[str]) -> tuple[str, list[str]] | None:
    """The interpreter, and the Python script with its arguments, that a standby runs for
    ``argv``: ``PYTHON SCRIPT.py ...`` (launch/vllm_cli.py), or a script whose first line names
    its Python by absolute path (the ``vllm`` console script); None for any other form (no
    standby then)."""
    if len(argv) > 1 and argv[1].endswith(".py") and "python" in Path(argv[0]).name:
        return argv[0], list(argv[1:])
    if not argv:
        return None
    try:
        with open(argv[0], "rb") as script:
            first = script.readline(300).strip()
    except OSError:
        return None
    interpreter = first[2:].decode(errors="replace") if first.startswith(b"#!/") else ""
    if "python" in Path(interpreter).name and " " not in interpreter and Path(interpreter).is_file():
        return interpreter, list(argv)
    return None


def start_standby(argv: Sequence[str], env: Mapping[str, str], log: logging.Logger,
                  preload: Sequence[str] = STANDBY_PRELOAD) -> Standby | None:
    """Start a standby for ``argv`` in ``env`` (None when its form has none, or it cannot
    start). Call it from the thread that supervises: the parent-death signal follows that thread."""
    found = standby_program(argv)
    if found is None:
        return None
    interpreter, program = found
    command = [interpreter, str(STANDBY_SCRIPT)]
    for module in preload:
        command += ["--preload", module]
    try:
        proc = subprocess.Popen(
            [*command, "--", *program], env=dict(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_parent_death_signal(signal.SIGKILL),
        )
    except OSError as exc:
        log.warning("cannot start a standby vLLM: %s", exc)
        return None
    return Standby(argv, env, proc, _Watchdog(proc.pid, log))


class _Child:
    """The running child, its output pump, its process group and its watchdog; or a standby
    (``standby``) adopted in its place when it fits."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        output: IO[str] | None,
        log: logging.Logger,
        on_line: Callable[[str], None] | None = None,
        write_line: Callable[[str], None] | None = None,
        standby: Standby | None = None,
    ) -> None:
        self.log = log
        self._on_line = on_line
        self._write_line = write_line
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._output = output
        unfit = standby.unfit(argv, env) if standby is not None else None
        if standby is not None and unfit is None and standby.go():
            self.proc, self.watchdog = standby.proc, standby.watchdog
            log.info("vLLM starts from its standby (pid %d): started ahead, its imports are done", self.proc.pid)
        else:
            if standby is not None:
                log.warning("the standby vLLM (pid %d) cannot be used (%s): starting vLLM afresh", standby.proc.pid,
                            unfit or "it no longer reads its input")
                standby.discard()
            self.proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_parent_death_signal(signal.SIGKILL),
            )
            self.watchdog = _Watchdog(self.proc.pid, log)
        self.pgid = self.proc.pid  # a new session leader's group id is its pid
        self._pump = threading.Thread(target=self._copy_output, name="vllm-output", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            # progress bars redraw with \r: keep what the terminal would finally show
            self.tail.append(line.rstrip("\r\n").rsplit("\r", 1)[-1])
            if self._on_line is not None:
                self._on_line(self.tail[-1])
            if self._output is not None:
                try:
                    # vLLM (or a model's remote code) may print a secret we know; a few `in` checks
                    if self._write_line is not None:
                        self._write_line(redact(line.rstrip("\r\n")))
                    else:
                        self._output.write(redact(line))
                        self._output.flush()
                except (OSError, ValueError):
                    self._output = None  # our stdout is gone; keep draining the pipe
        self.proc.stdout.close()

    def signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
            if sig == signal.SIGTERM:  # a stopped (SIGSTOP'd, hung) process acts on SIGTERM only once continued
                os.killpg(self.pgid, signal.SIGCONT)
        except (ProcessLookupError, PermissionError):
            pass

    def finish_output(self) -> None:
        # grandchildren may hold the pipe open; the sweep kills them, so this returns soon
        self._pump.join(timeout=2.0)

    def group_members(self) -> list[int]:
        """Living (non-zombie) processes still in the child's group."""
        alive = []
        for proc in psutil.process_iter(["pid", "status"]):
            try:
                if os.getpgid(proc.pid) == self.pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(proc.pid)
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return alive

    def reap_group(self) -> None:
        """Reap zombies of the group that are our children (we may be PID 1 / a subreaper)."""
        while True:
            try:
                pid, _ = os.waitpid(-self.pgid, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def wait_for_group(self, seconds: float) -> list[int]:
        """Poll the group for up to ``seconds`` until it is empty; the members still alive."""
        deadline = time.monotonic() + seconds
        while True:
            self.reap_group()
            alive = self.group_members()
            if not alive or time.monotonic() >= deadline:
                return alive
            time.sleep(_POLL_SECONDS)

    def sweep(self, patience: float, linger: float = 0.0) -> None:
        """Stop whatever is left of the group: wait up to ``linger`` for helpers to exit by
        themselves, then SIGTERM, wait up to ``patience``, SIGKILL.

        Helpers outliving the main process by a moment are normal (Python's multiprocessing
        resource tracker exits once its pipe closes), so cleaning them up is logged at INFO;
        WARNING when one needed SIGKILL or is a vLLM engine/worker process, which holds (GPU)
        memory that the next start needs.
        """
        leftovers = self.wait_for_group(linger)
        if not leftovers:
            return
        names = {pid: _describe_process(pid) for pid in leftovers}
        self.signal_group(signal.SIGTERM)
        survivors = self.wait_for_group(patience)
        if survivors:
            self.signal_group(signal.SIGKILL)
            deadline = time.monotonic() + 2.0
            while self.group_members() and time.monotonic() < deadline:
                time.sleep(0.02)
                self.reap_group()
        held_memory = any(name.startswith(_VLLM_TITLE) for name in names.values())
        shown = ", ".join(f"{name} (pid {pid}{', SIGKILL' if pid in survivors else ''})" for pid, name in names.items())
        count = len(leftovers)
        self.log.log(
            logging.WARNING if survivors or held_memory else logging.INFO,
            "cleaned up %d leftover process%s of vLLM's group after it exited: %s",
            count, "" if count == 1 else "es", shown,
        )


_VLLM_TITLE = "VLLM::"  # vLLM names its engine core and workers VLLM::EngineCore, VLLM::Worker_...


def _describe_process(pid: int) -> str:
    """A short name for a process: its vLLM title, 'multiprocessing resource tracker', or its
    command (shortened)."""
    try:
        proc = psutil.Process(pid)
        cmdline = proc.cmdline()
        name = proc.name()
    except psutil.Error:
        return "a process that has exited"
    command = " ".join(" ".join(cmdline).split()) or name  # one line, even for python -c scripts
    if _VLLM_TITLE in command or name.startswith(_VLLM_TITLE):
        title = command if command.startswith(_VLLM_TITLE) else name
        return title.split()[0]
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    return command if len(command) <= 60 else command[:57] + "..."


def _watch_readiness(check: ReadinessCheck, ready: threading.Event, stop: threading.Event) -> None:
    while not stop.is_set():
        if check.stage() == "ready":
            ready.set()
            return
        stop.wait(check.interval)


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


def describe_exit_code(code: int) -> str:
    """An exit code as a person reads it: 'exit 1', or 'killed by SIGKILL' for 137."""
    if code > 128:
        try:
            return f"killed by {signal.Signals(code - 128).name}"
        except ValueError:
            pass
    return f"exit {code}"


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class _Supervision:
    """One supervised run: the state, the signals received and the deadlines, changed only by
    ``on_signal`` (the signal handler) and ``tick`` (the calling thread's loop)."""

    def __init__(self, log: logging.Logger, grace_seconds: float, ready: ReadinessCheck | None,
                 ready_timeout: float | None) -> None:
        self.log = log
        self.grace = grace_seconds
        self.ready = ready
        self.ready_timeout = ready_timeout if ready is not None else None  # a headless worker never becomes ready
        self.state = SupervisorState.STARTING
        self.child: _Child | None = None
        self.received: list[int] = []
        self.started = time.monotonic()
        self.kill_at: float | None = None
        self.signalled_at: float | None = None  # when we forwarded the first signal
        self.ready_after: float | None = None
        self.outcome: Outcome = "exited"
        self.stop_request: StopRequest | None = None
        self.forced = False  # a second signal killed the group at once
        self.held_until: float | None = None  # a held first signal goes to vLLM at the latest then
        self.became_ready = threading.Event()

    def _enter(self, state: SupervisorState, why: str) -> None:
        self.log.debug("vLLM %s -> %s (%s)", self.state.value, state.value, why)
        self.state = state

    def _stop(self, sig: int, why: str) -> None:
        """The stop goes to vLLM's main process only: its own shutdown drains (--shutdown-timeout)
        and then stops its engine core and workers in order. Signalled directly, multiproc workers
        exit at once (SystemExit) and every in-flight request would fail. The grace-period
        SIGKILL and the sweep after the main process exits still cover the whole group."""
        assert self.child is not None
        self._enter(SupervisorState.STOPPING, why)
        try:
            os.kill(self.child.proc.pid, sig)
        except ProcessLookupError:
            pass
        self.kill_at = time.monotonic() + self.grace

    def on_signal(self, signum: int, hold: bool = False) -> None:
        first = not self.received
        self.received.append(signum)
        if self.child is None:
            return  # forwarded right after the child starts (see ``started_child``)
        if first:
            self.signalled_at = now = time.monotonic()
            name = signal.Signals(signum).name
            if self.state is SupervisorState.STOPPING:  # the group asked first: a second SIGTERM would cut vLLM's drain
                self.log.info("received %s: vLLM is already stopping (grace %gs)", name, self.grace)
                return
            if hold:
                self.held_until = now + max(0.0, self.grace - min(DRAIN_MARGIN_SECONDS, self.grace / 4))
                self.log.info("received %s: vLLM keeps serving its group until the leader has drained (at most %.0f s; "
                              "grace %gs)", name, self.held_until - now, self.grace)
                return
            self.log.info("received %s: stopping vLLM (grace %gs)", name, self.grace)
            self._stop(signum, f"received {name}")
        else:
            self.log.warning("second signal (%s): killing vLLM now", signal.Signals(signum).name)
            self.forced = True
            self.child.signal_group(signal.SIGKILL)

    def started_child(self, child: _Child) -> None:
        self.child = child
        if self.received:
            self.signalled_at = time.monotonic()
            self._stop(self.received[0], "a signal came before the start")

    def tick(self, stop_when: Callable[[], StopRequest | None] | None,
             on_ready: Callable[[float], None] | None, at_once: Callable[[], bool] = lambda: False) -> None:
        assert self.child is not None
        now = time.monotonic()
        if self.state is SupervisorState.STARTING and self.became_ready.is_set():
            self.ready_after = now - self.started
            self._enter(SupervisorState.READY, f"ready after {self.ready_after:.1f} s")
            if on_ready is not None:
                on_ready(self.ready_after)
        if self.kill_at is not None and now >= self.kill_at:
            self.log.warning("vLLM did not stop within %gs: killing its process group", self.grace)
            self.child.signal_group(signal.SIGKILL)
            self.kill_at = None
        if self.state is SupervisorState.STOPPING:
            return
        if self.held_until is not None:
            self._release(now, stop_when)
            return
        if (self.state is SupervisorState.STARTING and self.ready_timeout is not None
                and now - self.started >= self.ready_timeout):
            self.log.error("vLLM was not ready after %gs: stopping it", self.ready_timeout)
            self.outcome = "ready_timeout"
            self._stop(signal.SIGTERM, "not ready in time")
            return
        request = stop_when() if stop_when is not None else None
        if request is not None:
            self.stop_request = request
            self.outcome = "group_stopped"
            self.signalled_at = now
            if at_once():
                self.log.warning("stopping vLLM at once: %s (nothing to drain: its group lost a member)", request.reason)
                self._enter(SupervisorState.STOPPING, request.reason)
                self.child.signal_group(signal.SIGKILL)
                return
            self.log.warning("stopping vLLM: %s (grace %gs)", request.reason, self.grace)
            self._stop(signal.SIGTERM, request.reason)

    def _release(self, now: float, stop_when: Callable[[], StopRequest | None] | None) -> None:
        """A held signal: forward it once the group asks for the stop, or when the grace period
        less the drain margin is over; the kill stays due at the end of the grace period."""
        assert self.held_until is not None and self.signalled_at is not None
        request = stop_when() if stop_when is not None else None
        if request is not None:
            self.log.info("stopping vLLM: %s", request.reason)
            self.stop_request = request
            self.outcome = "group_stopped"
        elif now >= self.held_until:
            self.log.warning("the group's leader has not drained %.0f s after %s: stopping vLLM", now - self.signalled_at,
                             signal.Signals(self.received[0]).name)
        else:
            return
        self.held_until = None
        self._stop(self.received[0], "a held signal")
        self.kill_at = self.signalled_at + self.grace

    def after_exit(self, stop_when: Callable[[], StopRequest | None] | None) -> None:
        """vLLM exited by itself, and the group (told by ``exited``) says that is part of a stop
        it asked for (a worker whose leader drained): the group's exit code, not vLLM's."""
        if self.outcome == "exited" and not self.received and stop_when is not None:
            request = stop_when()
            if request is not None:
                self.stop_request = request
                self.outcome = "group_stopped"

    def result(self, returncode: int) -> SupervisorResult:
        assert self.child is not None
        self._enter(SupervisorState.EXITED, _describe_exit(returncode))
        if self.received and self.outcome == "exited":
            self.outcome = "stopped"
        if self.signalled_at is not None:
            self.log.info("vLLM stopped in %.1f s (%s)", time.monotonic() - self.signalled_at, _describe_exit(returncode))
        if self.outcome == "ready_timeout":
            code = READY_TIMEOUT_EXIT_CODE
        elif self.outcome == "group_stopped" and self.stop_request is not None:
            code = self.stop_request.exit_code
        elif self.outcome == "stopped" and (self.forced or returncode in (0, -self.received[0]) or self.held_until is not None):
            # stopped as asked (exited 0, or by the very signal forwarded), at once on a second
            # signal, or by itself while the signal was held (a worker whose leader went first):
            # the graceful code of the first signal, as docs/operations.md says
            code = GRACEFUL_STOP_EXIT_CODES.get(self.received[0], _exit_code(returncode))
        else:
            code = _exit_code(returncode)
        return SupervisorResult(
            exit_code=code,
            ready_after=self.ready_after,
            tail=tuple(self.child.tail),
            signal_received=self.received[0] if self.received else None,
            outcome=self.outcome,
            pid=self.child.proc.pid,
        )


def supervise(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    ready: ReadinessCheck | None,
    grace_seconds: float = 30.0,
    ready_timeout: float | None = None,
    on_ready: Callable[[float], None] | None = None,
    log: logging.Logger,
    output: IO[str] | None | Literal["stdout"] = "stdout",
    on_line: Callable[[str], None] | None = None,
    hooks: SupervisorHooks | None = None,
    write_line: Callable[[str], None] | None = None,
    standby: Standby | None = None,
) -> SupervisorResult:
    """Run ``argv`` with exactly ``env`` until it exits; see the module docstring for the rules.

    ``output`` receives the child's stdout and stderr, line by line, unchanged ("stdout": our
    sys.stdout at call time; None: discard; the tail is kept either way). ``on_line`` sees every
    output line (without its newline) from the output thread, e.g. to read vLLM's memory figures.
    ``ready_timeout`` applies only with a ``ready`` check. ``hooks`` (SupervisorHooks) is told
    when vLLM started, of each signal and of vLLM's exit (before the sweep), and is asked every
    0.1 s whether vLLM must stop (its StopRequest sets the exit code).
    ``write_line``: when given, writes each redacted line (without its newline) instead of
    ``output`` (the API passes the JSON-mode wrapper from logs); ``output`` None still discards.
    ``standby``: a vLLM started ahead for this very command (``start_standby``); it is used
    when it still fits and discarded otherwise.
    Signal handlers are installed only when called from the main thread, and the previous
    handlers are restored before returning.
    """
    for name, value in (("grace_seconds", grace_seconds), ("ready_timeout", ready_timeout)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    if output == "stdout":
        output = sys.stdout
    run = _Supervision(log, grace_seconds, ready, ready_timeout)
    hooks = hooks or SupervisorHooks()

    def handle_signal(signum: int, _frame: object) -> None:
        run.on_signal(signum, hold=not run.received and hooks.holds(signum))
        hooks.signalled(signum)

    previous: dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, handle_signal)

    stop_watch = threading.Event()
    child: _Child | None = None
    try:
        try:
            child = _Child(argv, env, output, log, on_line, write_line, standby)
        except OSError as exc:
            log.error("cannot start %s: %s", argv[0] if argv else "?", exc)
            return SupervisorResult(127, None, (str(exc),), run.received[0] if run.received else None)
        log.debug("started pid %d (process group %d)", child.proc.pid, child.pgid)
        run.started_child(child)
        hooks.started(lambda: child.proc.poll() is None, child.pgid)
        if ready is not None:
            threading.Thread(
                target=_watch_readiness,
                args=(ready, run.became_ready, stop_watch),
                name="vllm-readiness",
                daemon=True,
            ).start()
        while True:
            try:
                returncode = child.proc.wait(timeout=_POLL_SECONDS)
                break
            except subprocess.TimeoutExpired:
                run.tick(hooks.stop_request, on_ready, hooks.nothing_to_drain)
                hooks.tick()
        stop_watch.set()
        hooks.exited(returncode)
        run.after_exit(hooks.stop_request)
        if hooks.nothing_to_drain():  # helpers of an engine that lost its peer never finish: no wait
            child.signal_group(signal.SIGKILL)
            child.sweep(0.0)
        else:
            linger = 0.0 if len(run.received) > 1 else min(grace_seconds, _LINGER_SECONDS)
            child.sweep(min(grace_seconds, _SWEEP_SECONDS), linger)
        child.finish_output()
        return run.result(returncode)
    finally:
        stop_watch.set()
        if child is not None and child.proc.poll() is None:  # we are leaving on an exception
            child.signal_group(signal.SIGKILL)
            child.proc.wait()
        if child is not None:
            child.watchdog.dismiss()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

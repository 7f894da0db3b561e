"""A group's recovery in place against its cold start: two loopback `kaito-run` nodes of the tiny
model on the CPU (TP 2 across them, one core each), in one run.

The model comes from the hub emulator (tests/support/hub_emulator.py, in this process) by its repo
id, and each node has its own weights folder. Before anything is timed each node's folder is
filled once with `kaito-run download`; the emulator's byte counter (every byte it writes to a
client: status lines, headers, bodies) shows that fill, so a recovery that fetched anything would
show too.

- cold start: both launchers spawned fresh, weights already on disk; the clock runs from the
  worker's spawn (the leader is spawned just before it) to the leader answering: GET /health 200,
  the served name in /v1/models and a 1-token completion (polled every 0.1 s), as
  benchmarks/bench_multi_node.py measures it;
- recovery: one group started once with a restart budget; `kill -9` of the worker's vLLM; the
  clock runs from the kill to the leader's launcher reporting the next round ready
  (`kaito-run: ready in`) and the same readiness check passing. The kill comes once the group
  has settled (`--kill-after settled`, the default): each node's standby vLLM for the next round,
  started once the round serves, has done its imports, as it has long before a loss in a group
  that serves; `--kill-after ready` kills 2 s after the group answers instead.

For each, the bytes the emulator sent in that window and the launchers' weights steps are
counted, and the time between the launchers' log lines (taken as they arrive) says where it went.
The cold starts run first, alone (an idle group's vLLM would slow them), then the recoveries, one
after the other in the same group.

    .venv/bin/python benchmarks/bench_elastic.py [--reps 3] [--model models/tiny-llama]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench_multi_node import free_port, free_port_pair, node_args
from bench_ready import REPO, _exit_on_sigterm, _stop, fmt, kaito_run_bin

sys.path.insert(0, str(REPO))
from kaito_runtime.launch.supervisor import ReadinessCheck  # noqa: E402
from tests.support.hub_emulator import HubEmulator  # noqa: E402

REPO_ID = "bench/tiny-llama"
READY_LINE = "kaito-run: ready in"  # never the bare "ready in": "Address already in use" holds it
# Where a recovery's time goes: the first line of each node after the kill that holds the text.
MILESTONES = (
    (1, "group restarting", "worker: its vLLM's leftovers swept, round over"),
    (0, "group member lost", "leader: learns of the loss"),
    (0, "vLLM stopped in", "leader: its vLLM stopped"),
    (0, "standby vLLM for a next round started", "leader: standby started (round 2 on)"),
    (0, "group restarting", "leader: round over, backoff starts"),
    (1, "group released", "worker: group met again (released)"),
    (0, "starting vLLM (round", "leader: starts vLLM again"),
    (0, "Starting vLLM server on", "leader: vLLM's API server up"),
    (0, READY_LINE, "leader: ready (its own check)"),
)
COLD_MILESTONES = (
    (0, "weights ready at", "leader: weights step done"),
    (0, "group released", "leader: group met (released)"),
    (0, "starting vLLM", "leader: starts vLLM"),
    (0, "Starting vLLM server on", "leader: vLLM's API server up"),
    (0, READY_LINE, "leader: ready (its own check)"),
)


class Group:
    """Two launchers of one group; every output line is kept with the moment it arrived."""

    def __init__(self, model: str, env: dict[str, str], weights: list[Path], budget: int) -> None:
        master_port, self.port = free_port_pair(), free_port()
        self.lines: list[list[tuple[float, str]]] = [[], []]
        self.procs: list[subprocess.Popen] = []
        env = {**env, "KAITO_MAX_RESTARTS": str(budget)}
        for rank, port in ((0, self.port), (1, free_port())):
            argv = [kaito_run_bin(), *node_args(model, rank, master_port, port), "--weights-dir", str(weights[rank])]
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, cwd=REPO)
            self.spawned = time.monotonic()  # the last spawn wins: the worker's
            threading.Thread(target=self._read, args=(proc, self.lines[rank]), daemon=True).start()
            self.procs.append(proc)
        self.check = ReadinessCheck("127.0.0.1", self.port, Path(model).name, interval=0.1)

    @staticmethod
    def _read(proc: subprocess.Popen, into: list[tuple[float, str]]) -> None:
        for line in proc.stdout:
            into.append((time.monotonic(), line.rstrip("\n")))

    def count(self, rank: int, text: str) -> int:
        return sum(text in line for _, line in list(self.lines[rank]))

    def first_after(self, rank: int, text: str, since: float) -> float | None:
        return next((at - since for at, line in list(self.lines[rank]) if at >= since and text in line), None)

    def wait_ready(self, readies: int, since: float, timeout: float) -> float | None:
        """Seconds from ``since`` until the leader has said ready ``readies`` times and answers."""
        while time.monotonic() - since < timeout and all(p.poll() is None for p in self.procs):
            if self.count(0, READY_LINE) >= readies and self.check.stage() == "ready":
                return time.monotonic() - since
            time.sleep(0.1)
        return None

    def worker_vllm(self) -> int:
        """vLLM's main process on the worker: the launcher's child that leads its own process group
        and has started processes of its own (a standby waiting for the next round has none)."""
        import psutil

        for child in psutil.Process(self.procs[1].pid).children():
            if os.getpgid(child.pid) == child.pid and child.children():
                return child.pid
        raise SystemExit("the worker's launcher has no vLLM child:\n" + self.tail(1))

    def settle(self, timeout: float) -> float:
        """Wait until the group has settled after a start: each node's standby vLLM for the next
        round (kaito_runtime/launch/vllm_standby.py, started once the round serves) has started
        and done its imports (its CPU time stopped growing for a second), as it has long before
        a loss in a group that serves. Returns the seconds waited (the timeout at most)."""
        import psutil

        started = time.monotonic()
        last: dict[int, float] = {}
        quiet_since: float | None = None
        while time.monotonic() - started < timeout:
            standbys = []
            for proc in self.procs:
                for child in psutil.Process(proc.pid).children():
                    try:
                        if "vllm_standby.py" in " ".join(child.cmdline()) and not child.children():
                            standbys.append(child)
                    except psutil.Error:
                        continue
            now = {p.pid: sum(p.cpu_times()[:2]) for p in standbys}
            if len(standbys) == len(self.procs) and now == last:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= 1.0:
                    break
            else:
                quiet_since = None
            last = now
            time.sleep(0.25)
        return time.monotonic() - started

    def tail(self, rank: int, n: int = 30) -> str:
        return "\n".join(line for _, line in self.lines[rank][-n:])

    def stop(self, log_dir: Path | None = None, name: str = "") -> None:
        for proc in self.procs:
            _stop(proc)
        if log_dir is not None:  # each line with the seconds since the last spawn
            for rank, lines in enumerate(self.lines):
                (log_dir / f"{name}-rank{rank}.log").write_text(
                    "".join(f"{at - self.spawned:8.2f} {line}\n" for at, line in list(lines)))


@dataclass
class Window:
    seconds: float | None
    sent_bytes: int
    requests: int
    steps: list[tuple[str, float | None]]


def breakdown(group: Group, since: float, milestones) -> list[tuple[str, float | None]]:
    return [(what, group.first_after(rank, text, since)) for rank, text, what in milestones]


def show(label: str, window: Window) -> None:
    took = f"{window.seconds:.2f} s" if window.seconds is not None else "FAILED"
    steps = ", ".join(f"{what} +{at:.1f}" for what, at in window.steps if at is not None)
    print(f"{label}: {took}; hub sent {window.sent_bytes} bytes in {window.requests} requests\n    {steps}", flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-llama", help="a model folder, served by the hub emulator")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=400.0, help="per start or recovery, in seconds")
    parser.add_argument("--log-dir", type=Path, help="write each node's lines there, with their arrival times")
    parser.add_argument("--kill-after", choices=("settled", "ready"), default="settled",
                        help="kill once both nodes' standby vLLMs have done their imports (a loss in a group that "
                        "has served a while; default), or 2 s after the group answers (a loss right after a start)")
    args = parser.parse_args()
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix="bench-elastic-"))
    shutil.copytree(REPO / args.model, tmp / "hub" / REPO_ID)
    weights = [tmp / "weights-0", tmp / "weights-1"]
    cold: list[Window] = []
    recovery: list[Window] = []
    with HubEmulator(tmp / "hub", lfs_threshold=100_000) as hub:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE", "VLLM_"))}
        env.update(PYTHONUNBUFFERED="1", HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_ENDPOINT=hub.url,
                   HF_HOME=str(tmp / "hf-home"))
        for folder in weights:
            subprocess.run([kaito_run_bin(), "download", "--model", REPO_ID, "--weights-dir", str(folder)],
                           env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        model_bytes = sum(p.stat().st_size for p in (tmp / "hub" / REPO_ID).iterdir() if p.is_file())
        print(f"weights on disk: {len(weights)} folders filled by `kaito-run download`; the hub sent "
              f"{hub.sent_bytes()} bytes in {len(hub.records)} requests for them ({model_bytes} bytes of files "
              f"per copy); {os.cpu_count()} CPUs", flush=True)

        def window(seconds: float | None, bytes_before: int, requests_before: int, steps) -> Window:
            return Window(seconds, hub.sent_bytes() - bytes_before, len(hub.records) - requests_before, steps)

        for rep in range(args.reps):  # first, alone on the machine: an idle group's vLLM would slow them
            sent, requests = hub.sent_bytes(), len(hub.records)
            group = Group(REPO_ID, env, weights, budget=0)
            try:
                took = group.wait_ready(1, group.spawned, args.timeout)
                if took is None:
                    print("cold start not ready; leader's last lines:\n" + group.tail(0))
                run = window(took, sent, requests, breakdown(group, group.spawned, COLD_MILESTONES))
            finally:
                group.stop(args.log_dir, f"cold{rep + 1}")
            cold.append(run)
            show(f"rep {rep + 1} cold start", run)

        group = Group(REPO_ID, env, weights, budget=args.reps + 1)
        weights_steps = None
        try:
            if group.wait_ready(1, group.spawned, args.timeout) is None:
                raise SystemExit("the recovery group never became ready:\n" + group.tail(0))
            for rep in range(args.reps):
                waited = group.settle(args.timeout) if args.kill_after == "settled" else 0.0
                time.sleep(2)  # heartbeats flowing, no request in flight
                print(f"rep {rep + 1} recovery: killing the worker's vLLM {waited + 2:.1f} s after the group answered",
                      flush=True)
                sent, requests = hub.sent_bytes(), len(hub.records)
                killed = time.monotonic()
                os.kill(group.worker_vllm(), signal.SIGKILL)
                took = group.wait_ready(rep + 2, killed, args.timeout)
                run = window(took, sent, requests, breakdown(group, killed, MILESTONES))
                recovery.append(run)
                show(f"rep {rep + 1} recovery  ", run)
                if took is None:
                    print("leader's last lines:\n" + group.tail(0) + "\nworker's:\n" + group.tail(1))
                    break
            weights_steps = [group.count(rank, "weights ready at") for rank in (0, 1)]
        finally:
            group.stop(args.log_dir, "recovery")
    shutil.rmtree(tmp, ignore_errors=True)

    cold_s = [w.seconds for w in cold if w.seconds is not None]
    rec_s = [w.seconds for w in recovery if w.seconds is not None]
    report = [
        ("cold start (2 fresh launchers) -> answering", fmt(cold_s)),
        ("kill -9 of worker's vLLM -> answering again", fmt(rec_s)),
        ("hub bytes sent during each cold start", ", ".join(str(w.sent_bytes) for w in cold)),
        ("hub bytes sent during each recovery", ", ".join(str(w.sent_bytes) for w in recovery)),
        ("weights steps per node, recovery group", f"{weights_steps} (its start only: none in a recovery)"),
    ]
    if cold_s and rec_s:
        report.append(("ratio recovery / cold start", f"{statistics.median(rec_s) / statistics.median(cold_s):.3f}  "
                       "(medians; target <= 0.60)"))
    report.append(("kill after", args.kill_after))
    print("\n" + "\n".join(f"{name:45}: {value}" for name, value in report))


if __name__ == "__main__":
    main()

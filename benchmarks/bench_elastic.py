"""A group's recovery in place against its cold start: two loopback `kaito-run` nodes of the tiny
model on the CPU, weights already on disk (a local folder: nothing to download either way).

- cold start: both launchers spawned fresh; the clock runs from the worker's spawn to the leader
  answering (GET /health 200, the served name in /v1/models, a 1-token completion; polled every
  0.1 s), as benchmarks/bench_multi_node.py measures it;
- recovery: one group started once with a restart budget; `kill -9` of the worker's vLLM; the
  clock runs from the kill to the leader's launcher reporting the next round ready and the same
  readiness check passing. A recovery must not run the weights step at all (counted from the
  launchers' "weights ready" lines: it stays at one per node).

The cold starts run first, alone (an idle group's vLLM processes would slow them), then the
recoveries, one after the other in the same group.

    .venv/bin/python benchmarks/bench_elastic.py [--reps 3] [--model models/tiny-llama]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench_multi_node import free_port, free_port_pair, measure_group, node_args
from bench_ready import REPO, _exit_on_sigterm, _stop, fmt, kaito_run_bin
from kaito_runtime.launch.supervisor import ReadinessCheck


class Group:
    """One group kept up across recoveries; each node's output lines are collected."""

    def __init__(self, model: str, budget: int) -> None:
        master_port, self.port = free_port_pair(), free_port()
        self.lines: list[list[str]] = [[], []]
        self.procs: list[subprocess.Popen] = []
        env = {**os.environ, "KAITO_MAX_RESTARTS": str(budget)}
        for rank, port in ((0, self.port), (1, free_port())):
            proc = subprocess.Popen([kaito_run_bin(), *node_args(model, rank, master_port, port)], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, cwd=REPO)
            threading.Thread(target=self._read, args=(proc, self.lines[rank]), daemon=True).start()
            self.procs.append(proc)
        self.check = ReadinessCheck("127.0.0.1", self.port, Path(model).name, interval=0.1)

    @staticmethod
    def _read(proc: subprocess.Popen, into: list[str]) -> None:
        for line in proc.stdout:
            into.append(line.rstrip("\n"))

    def count(self, rank: int, text: str) -> int:
        return sum(text in line for line in list(self.lines[rank]))

    def wait_round_ready(self, readies: int, timeout: float) -> float | None:
        started = time.monotonic()
        while time.monotonic() - started < timeout and all(p.poll() is None for p in self.procs):
            if self.count(0, "ready in") >= readies and self.check.stage() == "ready":
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def worker_vllm(self) -> int:
        import psutil

        return psutil.Process(self.procs[1].pid).children()[0].pid

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=400.0, help="per start or recovery, in seconds")
    args = parser.parse_args()

    cold: list[float] = []
    recovery: list[float] = []
    for rep in range(args.reps):  # first, alone on the machine: an idle group's vLLM would slow them
        run = measure_group("kaito", args.model, args.timeout)
        if run.ready_s is not None:
            cold.append(run.ready_s)
        print(f"rep {rep + 1} cold start: {run.ready_s if run.ready_s is not None else 'FAILED'}", flush=True)
    group = Group(args.model, budget=args.reps + 1)
    weights_steps = None
    try:
        if group.wait_round_ready(1, args.timeout) is None:
            raise SystemExit("the recovery group never became ready:\n" + "\n".join(group.lines[0][-30:]))
        for rep in range(args.reps):
            time.sleep(2)  # settled: heartbeats flowing, no request in flight
            os.kill(group.worker_vllm(), signal.SIGKILL)
            took = group.wait_round_ready(rep + 2, args.timeout)
            if took is not None:
                recovery.append(took)
            print(f"rep {rep + 1} recovery  : {took if took is not None else 'FAILED'}", flush=True)
        weights_steps = [group.count(rank, "weights ready at") for rank in (0, 1)]
    finally:
        group.stop()

    report = [
        ("cold start (2 fresh launchers) -> answering", fmt(cold)),
        ("kill -9 of worker's vLLM -> answering again", fmt(recovery)),
        ("weights steps per node over all recoveries", f"{weights_steps} (1 each: none during a recovery, 0 bytes)"),
    ]
    if cold and recovery:
        report.append(("ratio recovery / cold start", f"{statistics.median(recovery) / statistics.median(cold):.3f}  (target <= 0.60)"))
    print("\n" + "\n".join(f"{name:45}: {value}" for name, value in report))

if __name__ == "__main__":
    main()

"""Two loopback nodes, last node's start to the group being ready: two `kaito-run` launchers vs.
the same two `vllm serve --nnodes 2` commands started by hand, on the tiny model and the CPU.

Both kinds are measured the same way from outside: the clock starts when the last of the two
processes is spawned (the worker; the leader is spawned just before it) and stops when the
leader's GET /health is 200, /v1/models lists the served name and a 1-token completion succeeds
(polled every 0.1 s). The hand-started commands and their environments are exactly what
`kaito-run --dry-run --output json` prints for rank 0 and rank 1, so the difference is the
launchers' own cost (torch import for the group store, the check-in, the leader's checks).
Runs alternate (bare, kaito, bare, kaito, ...) so drift hits both alike.

    .venv/bin/python benchmarks/bench_multi_node.py [--reps 3] [--model models/tiny-llama]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

from bench_ready import REPO, Run, _collect, _exit_on_sigterm, _stop, fmt, kaito_run_bin
from kaito_runtime.launch.supervisor import ReadinessCheck


def free_port_pair() -> int:
    """p with p and p+1 free (vLLM's master port and the group store's port after it)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_args(model: str, rank: int, master_port: int, port: int) -> list[str]:
    return ["--model", model, "--nnodes", "2", "--node-rank", str(rank), "--leader-address", "127.0.0.1",
            "--master-port", str(master_port), "--host", "127.0.0.1", "--port", str(port),
            "--cpu-cores", str(rank)]


def planned_command(args: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    import json

    out = subprocess.run([kaito_run_bin(), *args, "--dry-run", "--output", "json"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    vllm = json.loads(out)["vllm"]
    return list(vllm["argv"]), dict(vllm["env"]), list(vllm.get("unset_env", []))


def measure_group(kind: str, model: str, timeout: float) -> Run:
    master_port, leader_port, worker_port = free_port_pair(), free_port(), free_port()
    procs: list[subprocess.Popen] = []
    run = Run(kind)
    commands = []
    for rank, port in ((0, leader_port), (1, worker_port)):
        args = node_args(model, rank, master_port, port)
        if kind == "bare":
            argv, extra_env, unset = planned_command(args)
            env = {k: v for k, v in os.environ.items() if k not in set(unset)}
            env.update(extra_env)
        else:
            argv, env = [kaito_run_bin(), *args], dict(os.environ)
        commands.append((argv, env))
    readers = []
    t0 = 0.0
    try:
        for rank, (argv, env) in enumerate(commands):
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, cwd=REPO)
            t0 = time.monotonic()  # the last spawn wins: the worker's
            procs.append(proc)
            if rank == 0:
                reader = threading.Thread(target=_collect, args=(proc, t0, run), daemon=True)
            else:
                reader = threading.Thread(target=lambda p=proc: [None for _ in p.stdout], daemon=True)
            reader.start()
            readers.append(reader)
        check = ReadinessCheck("127.0.0.1", leader_port, Path(model).name, interval=0.1)
        while time.monotonic() - t0 < timeout and all(p.poll() is None for p in procs):
            if check.stage() == "ready":
                run.ready_s = time.monotonic() - t0
                break
            time.sleep(0.1)
    finally:
        for proc in procs:
            _stop(proc)
        for reader in readers:
            reader.join(timeout=5)
    for at, line in run.lines:
        if run.launcher_s is None and "starting vLLM" in line:
            run.launcher_s = at
    if run.ready_s is None:
        tail = "\n".join(line for _, line in run.lines[-30:])
        print(f"{kind}: not ready; leader's last lines:\n{tail}")
    return run


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--reps", type=int, default=3, help="groups of each kind (alternating)")
    parser.add_argument("--timeout", type=float, default=400.0, help="per-group limit in seconds")
    args = parser.parse_args()

    runs: dict[str, list[Run]] = {"bare": [], "kaito": []}
    for rep in range(args.reps):
        for kind in ("bare", "kaito"):
            run = measure_group(kind, args.model, args.timeout)
            runs[kind].append(run)
            ready = f"{run.ready_s:.2f} s" if run.ready_s is not None else "FAILED"
            launcher = f"  leader's launcher before vLLM {run.launcher_s:.2f} s" if kind == "kaito" and run.launcher_s else ""
            print(f"rep {rep + 1} {kind:5}: group ready after {ready}{launcher}", flush=True)

    bare = [r.ready_s for r in runs["bare"] if r.ready_s is not None]
    kaito = [r.ready_s for r in runs["kaito"] if r.ready_s is not None]
    launcher = [r.launcher_s for r in runs["kaito"] if r.launcher_s is not None]
    print()
    print(f"2 x vllm serve --nnodes 2 -> ready : {fmt(bare)}")
    print(f"2 x kaito-run             -> ready : {fmt(kaito)}")
    print(f"kaito-run before vLLM (leader)     : {fmt(launcher)}")
    if bare and kaito:
        ratio = statistics.median(kaito) / statistics.median(bare)
        delta = statistics.median(kaito) - statistics.median(bare)
        print(f"ratio kaito-run / by hand          : {ratio:.3f}  ({delta:+.2f} s; target <= 1.05)")


if __name__ == "__main__":
    main()

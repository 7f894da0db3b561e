"""The first request after a start on the CPU backend: kaito-run as planned (an eager launch gets
TORCH_COMPILE_DISABLE=1) against the same launch with TORCH_COMPILE_DISABLE=0 exported (a value
the user exports wins), where vLLM compiles its sampler and TP helpers at the first request that
needs them, as it does without us.

Each run spawns `kaito-run` on the tiny model (one node, or two loopback nodes with TP 2 and one
core each, `--nodes 2`), waits until the leader is ready (GET /health 200, the served name in
/v1/models and a 1-token greedy completion, polled every 0.1 s: with TP 2 that completion is the
first request through the vocabulary mask), then sends two sampled completions (temperature 1,
top-p 0.9, top-k 5, 2 logprobs, 4 tokens) and times each. Runs alternate (baseline, planned, ...)
so drift hits both alike. One baseline run comes first and is not counted: it fills torch's
inductor cache, so every counted baseline compiles from a warm cache, its best case.

    .venv/bin/python benchmarks/bench_first_request.py [--reps 3] [--nodes 1|2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from bench_multi_node import free_port_pair, node_args
from bench_ready import REPO, _exit_on_sigterm, _stop, fmt, free_port, kaito_run_bin

sys.path.insert(0, str(REPO))
from kaito_runtime.launch.supervisor import ReadinessCheck  # noqa: E402

SAMPLED = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 1.0, "top_p": 0.9, "top_k": 5,
           "logprobs": 2}
KINDS = {"baseline": {"TORCH_COMPILE_DISABLE": "0"}, "planned": {}}


@dataclass
class Run:
    kind: str
    ready_s: float | None = None
    first_s: float | None = None
    second_s: float | None = None
    env_line: str = ""
    lines: list[str] = field(default_factory=list)


def _completion(port: int, name: str) -> float:
    body = json.dumps({"model": name, **SAMPLED}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"content-type": "application/json"})
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as answer:
        text = json.loads(answer.read())["choices"][0]["text"]
    if not isinstance(text, str):
        raise RuntimeError(f"no text in the answer: {text!r}")
    return time.monotonic() - started


def measure(kind: str, model: str, nodes: int, timeout: float) -> Run:
    run = Run(kind)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_COMPILE_DISABLE"}
    env.update(KINDS[kind])
    port = free_port()
    if nodes == 1:
        commands = [[kaito_run_bin(), "--model", model, "--host", "127.0.0.1", "--port", str(port)]]
    else:
        master = free_port_pair()
        ports = [port, *(free_port() for _ in range(nodes - 1))]  # a worker answers /health on its own
        commands = [[kaito_run_bin(), *node_args(model, rank, master, ports[rank])] for rank in range(nodes)]
    name = os.path.basename(model.rstrip("/"))
    check = ReadinessCheck("127.0.0.1", port, name, interval=0.1)
    procs: list[subprocess.Popen] = []
    readers: list[threading.Thread] = []
    t0 = time.monotonic()
    try:
        for rank, argv in enumerate(commands):
            node_env = {**env, "KAITO_METRICS_PORT": str(free_port())}
            proc = subprocess.Popen(argv, env=node_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, cwd=REPO)
            procs.append(proc)
            keep = run.lines if rank == 0 else []
            reader = threading.Thread(target=lambda p=proc, k=keep: k.extend(line.rstrip("\n") for line in p.stdout),
                                      daemon=True)
            reader.start()
            readers.append(reader)
        while time.monotonic() - t0 < timeout and all(p.poll() is None for p in procs):
            if check.stage() == "ready":
                run.ready_s = time.monotonic() - t0
                break
            time.sleep(0.1)
        if run.ready_s is not None:
            run.first_s = _completion(port, name)
            run.second_s = _completion(port, name)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        for reader in readers:
            reader.join(timeout=5)
    run.env_line = next((line for line in run.lines if "starting vLLM" in line), "")
    if run.ready_s is None:
        print(f"{kind}: not ready; last lines:\n" + "\n".join(run.lines[-30:]), file=sys.stderr)
    return run


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument("--reps", type=int, default=3, help="runs of each kind (alternating)")
    parser.add_argument("--timeout", type=float, default=400.0, help="per start, in seconds")
    args = parser.parse_args()

    warm = measure("baseline", args.model, args.nodes, args.timeout)
    print(f"warm-up baseline (not counted): ready {warm.ready_s}, first sampled {warm.first_s}", flush=True)
    runs: dict[str, list[Run]] = {kind: [] for kind in KINDS}
    for rep in range(args.reps):
        for kind in KINDS:
            run = measure(kind, args.model, args.nodes, args.timeout)
            runs[kind].append(run)
            print(f"rep {rep + 1} {kind:8s}: ready {run.ready_s and round(run.ready_s, 2)} s, first sampled "
                  f"{run.first_s and round(run.first_s, 3)} s, second {run.second_s and round(run.second_s, 3)} s",
                  flush=True)
    for kind, kind_runs in runs.items():
        marks = {"TORCH_COMPILE_DISABLE=1" in r.env_line for r in kind_runs}
        print(f"{kind:8s} vLLM started with TORCH_COMPILE_DISABLE=1: {sorted(marks)}")

    def values(kind: str, attr: str) -> list[float]:
        return [getattr(r, attr) for r in runs[kind] if getattr(r, attr) is not None]

    def until_answer(kind: str) -> list[float]:
        return [r.ready_s + r.first_s for r in runs[kind] if r.ready_s is not None and r.first_s is not None]

    print()
    for label, attr in (("spawn -> ready", "ready_s"), ("first sampled request", "first_s"),
                        ("second sampled request", "second_s")):
        for kind in KINDS:
            print(f"{label:24s} {kind:8s}: {fmt(values(kind, attr))}")
    for kind in KINDS:
        print(f"{'spawn -> first answer':24s} {kind:8s}: {fmt(until_answer(kind))}")
    base, ours = values("baseline", "first_s"), values("planned", "first_s")
    if base and ours:
        print(f"ratio first sampled request planned / baseline : {statistics.median(ours) / statistics.median(base):.3f}")
    base, ours = until_answer("baseline"), until_answer("planned")
    if base and ours:
        print(f"ratio spawn -> first answer planned / baseline : {statistics.median(ours) / statistics.median(base):.3f}")


if __name__ == "__main__":
    main()

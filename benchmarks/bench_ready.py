"""Start-to-ready time: bare `vllm serve` vs. `kaito-run`, on the tiny model and the CPU backend.

Both runs are measured the same way from outside: the clock starts when the process is spawned
and stops when GET /health is 200, /v1/models lists the served name and a 1-token completion
succeeds (polled every 0.1 s). The bare command and its environment are exactly what
`kaito-run --dry-run --output json` says kaito-run would launch, so the difference is the
launcher's own cost. Runs alternate (bare, kaito, bare, kaito, ...) so drift hits both alike.
Also reported: kaito-run's time until its "starting vLLM" log line (work before vLLM's process
exists) and the wall time of a `--dry-run`.

    .venv/bin/python benchmarks/bench_ready.py [--reps 2] [--model models/tiny-llama]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from kaito_runtime.launch.supervisor import ReadinessCheck

REPO = Path(__file__).resolve().parent.parent


def kaito_run_bin() -> str:
    local = Path(sys.executable).parent / "kaito-run"
    return str(local) if local.exists() else (shutil.which("kaito-run") or "kaito-run")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Run:
    kind: str
    ready_s: float | None = None
    launcher_s: float | None = None  # kaito-run: spawn -> "starting vLLM" line
    reported_ready: str | None = None  # kaito-run's own "ready in" line
    lines: list[tuple[float, str]] = field(default_factory=list)


def _collect(proc: subprocess.Popen, t0: float, run: Run) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        run.lines.append((time.monotonic() - t0, line.rstrip("\n")))


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def measure(kind: str, argv: list[str], env: dict[str, str], check: ReadinessCheck, timeout: float) -> Run:
    run = Run(kind)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        cwd=REPO,
    )
    reader = threading.Thread(target=_collect, args=(proc, t0, run), daemon=True)
    reader.start()
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            if check.stage() == "ready":
                run.ready_s = time.monotonic() - t0
                break
            time.sleep(0.1)
    finally:
        _stop(proc)
        reader.join(timeout=5)
    for at, line in run.lines:
        if run.launcher_s is None and "starting vLLM" in line:
            run.launcher_s = at
        if "ready in" in line:
            run.reported_ready = line.strip()
    if run.ready_s is None:
        tail = "\n".join(line for _, line in run.lines[-30:])
        print(f"{kind}: not ready (exit {proc.returncode}); last lines:\n{tail}", file=sys.stderr)
    return run


def dry_run(model: str, port: int, extra: list[str]) -> tuple[dict, float]:
    argv = [kaito_run_bin(), "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--dry-run", "--output", "json", *(["--", *extra] if extra else [])]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO).stdout
    return json.loads(out), time.monotonic() - t0


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})"


def _exit_on_sigterm(signum, frame):
    # `timeout` or Ctrl-C: unwind through the finally blocks that stop the servers.
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/tiny-llama")
    parser.add_argument("--reps", type=int, default=2, help="runs of each kind (alternating)")
    parser.add_argument("--timeout", type=float, default=300.0, help="per-run limit in seconds")
    parser.add_argument("extra", nargs="*", help="extra vLLM arguments (after --)")
    args = parser.parse_args()

    runs: dict[str, list[Run]] = {"bare": [], "kaito": []}
    dry_times: list[float] = []
    for rep in range(args.reps):
        for kind in ("bare", "kaito"):
            port = free_port()
            plan, dry_s = dry_run(args.model, port, args.extra)
            dry_times.append(dry_s)
            vllm = plan["vllm"]
            argv_served = vllm["argv"]
            served = argv_served[argv_served.index("--served-model-name") + 1]
            check = ReadinessCheck("127.0.0.1", port, served, interval=0.1)
            env = {k: v for k, v in os.environ.items() if k not in set(vllm.get("unset_env", []))}
            if kind == "bare":
                env.update(vllm["env"])
                argv = list(argv_served)
            else:
                argv = [kaito_run_bin(), "--model", args.model, "--host", "127.0.0.1", "--port", str(port)]
                argv += ["--", *args.extra] if args.extra else []
            run = measure(kind, argv, env, check, args.timeout)
            runs[kind].append(run)
            extra_info = ""
            if kind == "kaito":
                extra_info = f"  launcher {run.launcher_s:.2f} s" if run.launcher_s is not None else ""
            ready = f"{run.ready_s:.2f} s" if run.ready_s is not None else "FAILED"
            print(f"rep {rep + 1} {kind:5}: ready after {ready}{extra_info}", flush=True)

    bare = [r.ready_s for r in runs["bare"] if r.ready_s is not None]
    kaito = [r.ready_s for r in runs["kaito"] if r.ready_s is not None]
    launcher = [r.launcher_s for r in runs["kaito"] if r.launcher_s is not None]
    print()
    print(f"bare vllm serve -> ready : {fmt(bare)}")
    print(f"kaito-run       -> ready : {fmt(kaito)}")
    print(f"kaito-run before vLLM    : {fmt(launcher)}")
    print(f"kaito-run --dry-run wall : {fmt(dry_times)}")
    if bare and kaito:
        ratio = statistics.median(kaito) / statistics.median(bare)
        delta = statistics.median(kaito) - statistics.median(bare)
        print(f"ratio kaito-run / bare   : {ratio:.3f}  ({delta:+.2f} s)")
    if bare and launcher:
        print(f"launcher share of bare   : {statistics.median(launcher) / statistics.median(bare):.3f}")
    for run in runs["kaito"][-1:]:
        if run.reported_ready:
            print(f"kaito-run says           : {run.reported_ready}")


if __name__ == "__main__":
    main()

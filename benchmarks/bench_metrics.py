"""The launcher's own HTTP (issue 22): what it costs and how soon it answers.

1. Start-to-ready of the tiny model on the CPU backend with the launcher's HTTP on (the metrics
   port, scraped every second as Prometheus would, and the API port held until vLLM's first
   line) vs off (`--metrics-port 0 --no-startup-http`), alternating on, off, on, off, ... in one
   run. Ready = measured from outside, from the spawn: vLLM's /health 200, the served name in
   /v1/models and a 1-token completion (polled every 0.1 s). Target: median on / median off <= 1.02.
2. First /metrics answer after the process starts (the spawn): polled every 10 ms, in every
   "on" run and in `--first-reps` extra runs that are stopped (SIGTERM) right after the answer.
   Target: median <= 1 s.
3. The API port's hand-over in the "on" runs: the last answer of the launcher (it names its
   phase in X-Kaito-Phase) and the first of vLLM, probed every `--probe-s` seconds (default 1 s,
   about a kubelet probe's load; in the "off" runs too, so both modes carry the same probing);
   between them the port refuses connections while vLLM builds its engine. A fine probe (0.05 s)
   measures the gap closely but makes the "on" launcher answer 20 requests a second, a load no
   real probe puts on it, so it is not the setting for the ratio.

    .venv/bin/python benchmarks/bench_metrics.py [--reps 3] [--first-reps 10] [--json FILE]
Run it alone on the machine (flock /work/tools/heavy.lock on a shared box).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench_ready import free_port, kaito_run_bin  # the same launcher and ports as the ready benchmark
from kaito_runtime.launch.supervisor import ReadinessCheck

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "tiny-llama"


def answer(port: int, path: str, timeout: float = 1.0) -> tuple[int | None, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            response.read()
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)
    except (OSError, urllib.error.URLError):
        return None, {}


@dataclass
class Run:
    mode: str  # "on" or "off"
    ready_s: float | None = None
    first_metrics_s: float | None = None
    last_launcher_s: float | None = None  # the API port: the launcher's last answer
    first_vllm_s: float | None = None  # the API port: vLLM's first answer
    exit_code: int | None = None
    api_seen: list[tuple[float, str]] = field(default_factory=list, repr=False)

    @property
    def gap_s(self) -> float | None:
        if self.last_launcher_s is None or self.first_vllm_s is None:
            return None
        return self.first_vllm_s - self.last_launcher_s


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", KAITO_TERMINATION_LOG="none")
    return env


def one_run(mode: str, tmp: Path, *, stop_after_first_metrics: bool = False, probe_s: float = 1.0) -> Run:
    run = Run(mode)
    port, metrics_port = free_port(), free_port()
    switches = ["--metrics-port", str(metrics_port)] if mode == "on" else ["--metrics-port", "0", "--no-startup-http"]
    argv = [kaito_run_bin(), "--model", str(MODEL), "--host", "127.0.0.1", "--port", str(port),
            "--weights-dir", str(tmp / "weights"), "--grace-period", "10", *switches]
    stop = threading.Event()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=_env(tmp), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp)

    def first_metrics() -> None:
        while not stop.is_set() and proc.poll() is None:
            if answer(metrics_port, "/metrics", timeout=0.5)[0] == 200:
                run.first_metrics_s = time.monotonic() - t0
                return
            time.sleep(0.01)

    def scrape() -> None:  # as Prometheus would, once a second
        while not stop.wait(1.0):
            answer(metrics_port, "/metrics")

    def probe_api() -> None:
        while not stop.is_set():
            code, headers = answer(port, "/health", timeout=0.5)
            now = time.monotonic() - t0
            if code is not None:
                who = "launcher" if "X-Kaito-Phase" in headers else "vllm"
                run.api_seen.append((now, who))
                if who == "launcher":
                    run.last_launcher_s = now
                elif run.first_vllm_s is None:
                    run.first_vllm_s = now
            time.sleep(probe_s)

    # The API port is probed in both modes (the same load on the machine either way); the
    # metrics port exists and is scraped only "on".
    workers = (first_metrics, scrape, probe_api) if mode == "on" else (probe_api,)
    threads = [threading.Thread(target=f, daemon=True) for f in workers]
    for thread in threads:
        thread.start()
    try:
        if stop_after_first_metrics:
            threads[0].join(30)
        else:
            check = ReadinessCheck(host="127.0.0.1", port=port, served_name="tiny-llama", interval=0.1)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and proc.poll() is None:
                if check.stage() == "ready":
                    run.ready_s = time.monotonic() - t0
                    break
                time.sleep(0.1)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            run.exit_code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            run.exit_code = proc.wait()
    return run


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="start-to-ready runs per mode (alternating)")
    parser.add_argument("--first-reps", type=int, default=10, help="extra runs stopped after the first /metrics answer")
    parser.add_argument("--probe-s", type=float, default=1.0, help="seconds between API-port probes (both modes)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args()

    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as folder:
        tmp = Path(folder)
        for rep in range(1, args.reps + 1):
            for mode in ("on", "off"):
                run = one_run(mode, tmp, probe_s=args.probe_s)
                runs.append(run)
                extra = ""
                if mode == "on":
                    extra = (f"  first /metrics {run.first_metrics_s or float('nan'):.2f} s"
                             f"  API port gap {run.gap_s if run.gap_s is not None else float('nan'):.2f} s")
                print(f"rep {rep} {mode:3}: ready after {run.ready_s or float('nan'):6.2f} s{extra}", flush=True)
        quick = []
        for i in range(args.first_reps):
            run = one_run("on", tmp, stop_after_first_metrics=True)
            quick.append(run)
            print(f"first /metrics run {i + 1}: {run.first_metrics_s or float('nan'):.3f} s (exit {run.exit_code})", flush=True)

    on = [r.ready_s for r in runs if r.mode == "on" and r.ready_s is not None]
    off = [r.ready_s for r in runs if r.mode == "off" and r.ready_s is not None]
    firsts = [r.first_metrics_s for r in [*runs, *quick] if r.mode == "on" and r.first_metrics_s is not None]
    gaps = [r.gap_s for r in runs if r.gap_s is not None]
    ratio = median(on) / median(off) if on and off else None
    print()
    print(f"ready, launcher HTTP on : median {median(on) or float('nan'):6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in on)})")
    print(f"ready, launcher HTTP off: median {median(off) or float('nan'):6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in off)})")
    print(f"ratio on / off          : {ratio:.3f}  (target <= 1.02)" if ratio else "ratio on / off: n/a")
    print(f"first /metrics answer   : median {median(firsts) or float('nan'):.3f} s after the spawn, max "
          f"{max(firsts) if firsts else float('nan'):.3f} s, {len(firsts)} runs  (target: median <= 1 s)")
    print(f"API port gap            : median {median(gaps) or float('nan'):.2f} s  (runs: {', '.join(f'{v:.2f}' for v in gaps)})"
          " (last launcher 503 -> first vLLM answer; refused in between)")
    if args.json:
        args.json.write_text(json.dumps({
            "machine": f"{platform.machine()} {os.cpu_count()} cores",
            "ready_on_s": on, "ready_off_s": off, "ratio_on_off": ratio,
            "first_metrics_s": firsts, "first_metrics_median_s": median(firsts),
            "api_port_gap_s": gaps, "api_port_gap_median_s": median(gaps),
            "runs": [{k: v for k, v in asdict(r).items() if k != "api_seen"} for r in runs],
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

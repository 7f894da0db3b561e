"""Start-to-ready time of the tiny model: kaito-run in the CPU image (podman) vs. the same kaito-run
outside a container, on the CPU backend. Target: container / host <= 1.10.

Both are measured the same way from outside (as benchmarks/bench_ready.py does): the clock starts
when the command is spawned (`podman run ...` or `kaito-run ...`) and stops when GET /health is
200, /v1/models lists the served name and a 1-token completion succeeds (polled every 0.1 s).
Same flags, same model folder (bind-mounted read-only into the container), same host network.
Each side first runs once unmeasured, so both measured sides start with a warm vLLM/torch compile
cache (the container's on a named volume at /workspace/cache, the host's in a temporary folder)
and a warm page cache; then the runs alternate (host, container, host, ...) so drift hits both.
Also reported: the wall time of `podman run --rm IMAGE --version`, the container's fixed cost.

    flock /work/tools/heavy.lock .venv/bin/python benchmarks/bench_container.py [--reps 3]

The image is built or found by scripts/build-image.sh cpu (cached).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kaito_runtime.launch.supervisor import ReadinessCheck  # noqa: E402

PODMAN = str(REPO / "scripts" / "podman.sh")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kaito_run_bin() -> str:
    local = Path(sys.executable).parent / "kaito-run"
    return str(local) if local.exists() else (shutil.which("kaito-run") or "kaito-run")


def flags(model: str, port: int) -> list[str]:
    return ["--model", model, "--served-model-name", "tiny-llama", "--host", "127.0.0.1", "--port", str(port)]


def measure(argv: list[str], env: dict[str, str], port: int, stop, timeout: float) -> float | None:
    check = ReadinessCheck("127.0.0.1", port, "tiny-llama", interval=0.1)
    log = tempfile.TemporaryFile()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    ready = None
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            if check.stage() == "ready":
                ready = time.monotonic() - t0
                break
            time.sleep(0.1)
    finally:
        stop(proc)
    if ready is None:
        log.seek(0)
        print(f"not ready (exit {proc.returncode}):\n{log.read().decode(errors='replace')[-3000:]}", file=sys.stderr)
    return ready


def stop_host(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_container(name: str):
    def stop(proc: subprocess.Popen) -> None:
        subprocess.run([PODMAN, "stop", "--time", "60", name], capture_output=True, timeout=120)
        subprocess.run([PODMAN, "rm", "--force", name], capture_output=True, timeout=120)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return stop


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):6.2f} s  (runs: {', '.join(f'{v:.2f}' for v in values)})"


def main() -> None:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="measured runs of each kind (alternating)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per-run limit in seconds")
    args = parser.parse_args()

    built = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh"), "cpu"], capture_output=True, text=True)
    if built.returncode != 0:
        sys.exit(f"bench_container: scripts/build-image.sh cpu failed:\n{built.stderr[-2000:]}")
    tag = next(line.split()[-1] for line in built.stdout.splitlines() if line.startswith("image:"))
    image_id = next(line.split()[-1] for line in built.stdout.splitlines() if line.startswith("image id:"))

    model = REPO / "models" / "tiny-llama"
    host_cache = Path(tempfile.mkdtemp(prefix="bench-container-cache-"))
    host_env = {k: v for k, v in os.environ.items() if not k.startswith(("KAITO_", "VLLM_", "HF_"))}
    host_env.update(VLLM_CACHE_ROOT=str(host_cache / "vllm"), HF_HOME=str(host_cache / "hf"),
                    TRITON_CACHE_DIR=str(host_cache / "triton"), TORCHINDUCTOR_CACHE_DIR=str(host_cache / "inductor"),
                    XDG_CACHE_HOME=str(host_cache / "xdg"), VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                    HF_HUB_DISABLE_TELEMETRY="1")
    volume = f"bench-container-cache-{os.getpid()}"

    def host_run() -> float | None:
        port = free_port()
        return measure([kaito_run_bin(), *flags(str(model), port)], host_env, port, stop_host, args.timeout)

    def container_run() -> float | None:
        port = free_port()
        name = f"bench-container-{os.getpid()}-{port}"
        argv = [PODMAN, "run", "--rm", "--name", name, "--network", "host", "--health-interval", "disable",
                "-v", f"{model}:/models/tiny-llama:ro", "-v", f"{volume}:/workspace/cache",
                tag, *flags("/models/tiny-llama", port)]
        return measure(argv, dict(os.environ), port, stop_container(name), args.timeout)

    fixed = []
    for _ in range(3):
        t0 = time.monotonic()
        subprocess.run([PODMAN, "run", "--rm", "--network", "host", "--health-interval", "disable", tag, "--version"],
                       capture_output=True, check=True)
        fixed.append(time.monotonic() - t0)

    runs: dict[str, list[float]] = {"host": [], "container": []}
    try:
        print(f"image {tag} ({image_id[:12]}); warm-up runs (not measured) ...", flush=True)
        for kind, run in (("host", host_run), ("container", container_run)):
            print(f"warm-up {kind:9}: {run()}", flush=True)
        for rep in range(args.reps):
            for kind, run in (("host", host_run), ("container", container_run)):
                ready = run()
                if ready is not None:
                    runs[kind].append(ready)
                print(f"rep {rep + 1} {kind:9}: ready after {f'{ready:.2f} s' if ready is not None else 'FAILED'}",
                      flush=True)
    finally:
        subprocess.run([PODMAN, "volume", "rm", "--force", volume], capture_output=True)
        shutil.rmtree(host_cache, ignore_errors=True)

    print()
    print(f"kaito-run on the host -> ready      : {fmt(runs['host'])}")
    print(f"kaito-run in the container -> ready : {fmt(runs['container'])}")
    print(f"podman run --rm IMAGE --version     : {fmt(fixed)}")
    if runs["host"] and runs["container"]:
        ratio = statistics.median(runs["container"]) / statistics.median(runs["host"])
        delta = statistics.median(runs["container"]) - statistics.median(runs["host"])
        print(f"ratio container / host              : {ratio:.3f}  ({delta:+.2f} s; target <= 1.10)")


if __name__ == "__main__":
    main()

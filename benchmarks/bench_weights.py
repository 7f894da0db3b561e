"""Weights step vs. `hf download`, both against the hub emulator (a separate process).

Creates a repo of N random safetensors-named shards plus a config in a temp folder, serves it with
``python -m tests.support.hub_emulator`` and times, each in a fresh Python process:

  (a) ensure_weights, cold           (download + sha256 verification + marker)
  (b) `hf download REPO --revision SHA --local-dir X`   (huggingface_hub's own CLI, same files)
  (c) ensure_weights, warm re-launch (the marker is present)
  (d) ensure_weights after the cold run was SIGKILLed half-way (resumes from its partial files)
  (e) ensure_weights, warm with verify=True (re-hashes every file of the complete copy)

Usage: python benchmarks/bench_weights.py [--shards 4] [--shard-mb 75] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
REPO_ID = "bench/model"

KAITO_SNIPPET = """
import sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[3])
t0 = time.monotonic()
from kaito_runtime.types import WeightsSource
from kaito_runtime.weights import ensure_weights
spec = WeightsSource(name="bench", repo_id=sys.argv[4], revision=sys.argv[5])
t1 = time.monotonic()
r = ensure_weights(spec, weights_dir=Path(sys.argv[1]), token=None, endpoint=sys.argv[2], progress="none",
                   verify=sys.argv[6:] == ["verify"])
t2 = time.monotonic()
print(f"STEP {t2 - t1:.4f} IMPORT {t1 - t0:.4f} REUSED {r.reused} BYTES {r.downloaded_bytes}")
"""


def make_repo(root: Path, shards: int, shard_bytes: int) -> int:
    repo = root / REPO_ID
    repo.mkdir(parents=True)
    (repo / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    weight_map = {}
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        with (repo / name).open("wb") as f:
            left = shard_bytes
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        weight_map[f"layer{i}"] = name
    (repo / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(p.stat().st_size for p in repo.iterdir())


def start_emulator(root: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.hub_emulator", "--root", str(root)],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=env,
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, line.split()[1]


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    elapsed = time.monotonic() - t0
    if out.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return elapsed, out.stdout


def commit_of(url: str, env: dict[str, str]) -> str:
    code = f"from huggingface_hub import HfApi; print(HfApi(endpoint={url!r}, token=False).model_info({REPO_ID!r}).sha)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def killed_then_resumed(kcmd: list[str], wdir: Path, total: int, env: dict[str, str]) -> tuple[float, int, int]:
    """SIGKILL a cold run once half the bytes are on disk; time the re-run.

    Returns (re-run seconds, bytes on disk at the kill, bytes the re-run downloaded)."""
    child = subprocess.Popen(kcmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT)
    on_disk = 0
    while child.poll() is None and on_disk < total // 2:
        on_disk = sum(p.stat().st_size for p in wdir.rglob("*") if p.is_file()) if wdir.exists() else 0
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    if child.returncode != -signal.SIGKILL:
        raise SystemExit("the cold run finished before it could be killed; use bigger shards")
    on_disk = sum(p.stat().st_size for p in wdir.rglob("*") if p.is_file())
    t, out = timed(kcmd, env)
    return t, on_disk, int(out.split()[7])


def hf_cli() -> list[str]:
    script = Path(sys.executable).parent / "hf"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from huggingface_hub.cli.hf import main; main()"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--shard-mb", type=int, default=75)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kaito-bench-weights-"))
    env = {
        **os.environ,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HOME": str(work / "hf-home"),
    }
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    emulator = None
    try:
        total = make_repo(work / "repos", args.shards, args.shard_mb * 1000 * 1000)
        emulator, url = start_emulator(work / "repos", env)
        env["HF_ENDPOINT"] = url
        sha = commit_of(url, env)
        print(f"repo {REPO_ID}@{sha[:12]}: {args.shards} x {args.shard_mb} MB shards, {total / 1e6:.0f} MB total; "
              f"emulator {url}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs")

        kaito_cold, kaito_step, hf_times, warm, warm_step, resumed, kept, refetched = [], [], [], [], [], [], [], []
        verified_step: list[float] = []
        for rep in range(args.reps):
            wdir, hdir = work / f"weights-{rep}", work / f"hf-{rep}"
            kcmd = [sys.executable, "-c", KAITO_SNIPPET, str(wdir), url, str(REPO_ROOT), REPO_ID, sha]
            t, out = timed(kcmd, env)
            kaito_cold.append(t)
            kaito_step.append(float(out.split()[1]))
            t, _ = timed(hf_cli() + ["download", REPO_ID, "--revision", sha, "--local-dir", str(hdir)], env)
            hf_times.append(t)
            t, out = timed(kcmd, env)
            assert "REUSED True" in out, out
            warm.append(t)
            warm_step.append(float(out.split()[1]))
            _, out = timed(kcmd + ["verify"], env)
            assert "REUSED True" in out, out
            verified_step.append(float(out.split()[1]))
            shutil.rmtree(wdir)
            shutil.rmtree(hdir)
            t, on_disk, fetched = killed_then_resumed(kcmd, wdir, total, env)
            resumed.append(t)
            kept.append(on_disk)
            refetched.append(fetched)
            shutil.rmtree(wdir)

        med = statistics.median
        print(f"(a) kaito ensure_weights cold : {med(kaito_cold):7.2f} s process ({med(kaito_step):.2f} s in the step, "
              f"incl. sha256 verification) = {total / 1e6 / med(kaito_step):.0f} MB/s")
        print(f"(b) hf download (CLI)         : {med(hf_times):7.2f} s process")
        print(f"(c) kaito warm re-launch      : {med(warm):7.2f} s process ({med(warm_step) * 1000:.1f} ms in the step)")
        print(f"(d) kaito re-run after SIGKILL: {med(resumed):7.2f} s process; {med(kept) / 1e6:.0f} MB were on disk at "
              f"the kill, the re-run fetched {med(refetched) / 1e6:.0f} MB of {total / 1e6:.0f} MB")
        print(f"(e) kaito warm, verify=True   : {med(verified_step):7.2f} s in the step (re-hash) = "
              f"{total / 1e6 / med(verified_step):.0f} MB/s")
        print(f"ratio kaito/hf (cold, process): {med(kaito_cold) / med(hf_times):.2f}")
        print(f"ratio warm/cold (process)     : {med(warm) / med(kaito_cold):.3f}")
        print(f"ratio warm/cold (step only)   : {med(warm_step) / med(kaito_step):.5f}")
    finally:
        if emulator is not None:
            emulator.terminate()
            emulator.wait(5)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

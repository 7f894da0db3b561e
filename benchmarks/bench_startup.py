"""Start-up cost of the launcher's instant commands against a bare interpreter, in one run.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 15]

Prints the median wall time of `python -c pass`, `kaito-run --list-presets` and
`kaito-run --preset ... --dry-run --sku ...`, and their ratios to the bare interpreter. Also checks
that none of them imported torch, transformers or vllm.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROBE = (
    "import sys, runpy; sys.argv = ['kaito-run'] + sys.argv[1:]; "
    "import kaito_runtime.cli as c\n"
    "try:\n    c.main()\nexcept SystemExit:\n    pass\n"
    "heavy = [m for m in ('torch', 'transformers', 'vllm') if m in sys.modules]\n"
    "assert not heavy, f'imported {heavy}'\n"
)


def timed(argv: list[str], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    py = sys.executable
    cases = {
        "python -c pass": [py, "-c", "pass"],
        "kaito-run --list-presets": [py, "-c", PROBE, "--list-presets"],
        "kaito-run --list-presets -o json": [py, "-c", PROBE, "--list-presets", "--output", "json"],
        "kaito-run --preset llama-3.3-70b-instruct --dry-run --sku Standard_NC96ads_A100_v4": [
            py, "-c", PROBE, "--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC96ads_A100_v4",
        ],
        "kaito-run --preset phi-4-mini-instruct --dry-run (local probe)": [
            py, "-c", PROBE, "--preset", "phi-4-mini-instruct", "--dry-run",
        ],
    }
    timed(cases["python -c pass"], 3)  # warm the page cache
    results = {name: timed(argv, args.repeat) for name, argv in cases.items()}
    base = results["python -c pass"]
    print(f"{'command':<80} {'median':>9} {'ratio':>7}")
    for name, seconds in results.items():
        print(f"{name:<80} {seconds * 1000:7.1f}ms {seconds / base:6.1f}x")


if __name__ == "__main__":
    main()

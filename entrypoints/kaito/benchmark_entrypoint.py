#!/usr/bin/env python3
"""KAITO's /workspace/vllm/benchmark_entrypoint.py: the startup probe that runs a benchmark.

KAITO makes this the startup probe of every Workspace not annotated
``kaito.sh/disable-benchmark: "true"`` (exec, period 10 s, timeout 600 s). Its behaviour:

1. ``GET http://localhost:5000/health``; not 200 -> exit 1 (kubelet retries the probe).
2. A worker (``POD_INDEX`` set and not 0) exits 0.
3. The tokenizer: ``KAITO_PROCESSOR``, else ``/workspace/weights`` when it holds config.json, else
   the folder vLLM serves (``root`` of ``/v1/models``: our weights folder, not an HF cache).
4. Concurrency = min(KV blocks / blocks per request of input + output tokens, from
   ``vllm:cache_config_info``; ``kaito_max_concurrent_requests``, the resolved max_num_seqs that
   our 429 guard publishes on vLLM's ``/metrics``), at least 1; whichever is known.
5. guidellm (pinned, run as ``python3 -m guidellm``): the throughput profile at that concurrency,
   synthetic prompts of the input/output lengths, for the duration; then waits until
   ``vllm:num_requests_running`` is 0 (at most the drain timeout).
6. Tokens per minute = delta(vllm:generation_tokens_total + vllm:prompt_tokens_total) x 60 / the
   seconds from the start of the load to the end of the drain; TTFT and TPOT means from guidellm.
7. Two lines, ``TAG <UTC ISO time> <compact JSON>``, written through PID 1's stdout
   (``/proc/1/fd/1``: an exec probe's own output is not in ``kubectl logs``), else this
   process's stdout:
   ``KAITO_BENCHMARK_CONFIG ... {"duration_sec":60,"input_tokens":2048,"output_tokens":256,"max_concurrency":N}``
   ``KAITO_BENCHMARK_RESULT ... {"vllm_total_tpm":X,"ttft_avg_ms":Y,"tpot_avg_ms":Z}``
   Once /health is 200, a failure still writes the result line, with -1 values, and exits 1.

Environment (KAITO's defaults; tests shorten them): KAITO_BENCHMARK_URL (http://localhost:5000),
KAITO_BENCHMARK_DURATION (60 s), KAITO_BENCHMARK_INPUT_TOKENS (2048),
KAITO_BENCHMARK_OUTPUT_TOKENS (256), KAITO_BENCHMARK_DRAIN_TIMEOUT (300 s), KAITO_PROCESSOR.
Every failure is one ``benchmark_entrypoint.py:`` line on stderr, never a traceback. Only the
standard library is imported here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ME = "benchmark_entrypoint.py"
PID1_STDOUT = "/proc/1/fd/1"
KAITO_WEIGHTS = "/workspace/weights"
CONFIG_TAG = "KAITO_BENCHMARK_CONFIG"
RESULT_TAG = "KAITO_BENCHMARK_RESULT"
FAILED = {"vllm_total_tpm": -1, "ttft_avg_ms": -1, "tpot_avg_ms": -1}
TOKEN_COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total")


class ProbeError(Exception):
    """One line for the pod's events: what failed."""


@dataclass(frozen=True)
class Settings:
    url: str
    duration: int
    input_tokens: int
    output_tokens: int
    drain_timeout: float
    processor: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def number(name: str, default: int) -> int:
            text = env.get(name, "").strip() or str(default)
            if not text.isdigit() or int(text) <= 0:
                raise ProbeError(f"{name}={text}: must be a whole number above 0")
            return int(text)

        return cls(
            url=(env.get("KAITO_BENCHMARK_URL") or "http://localhost:5000").rstrip("/"),
            duration=number("KAITO_BENCHMARK_DURATION", 60),
            input_tokens=number("KAITO_BENCHMARK_INPUT_TOKENS", 2048),
            output_tokens=number("KAITO_BENCHMARK_OUTPUT_TOKENS", 256),
            drain_timeout=number("KAITO_BENCHMARK_DRAIN_TIMEOUT", 300),
            processor=env.get("KAITO_PROCESSOR") or None,
        )


# -- HTTP and Prometheus text ------------------------------------------------------------------


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own server
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except (OSError, ValueError) as error:
        raise ProbeError(f"{url}: no answer ({getattr(error, 'reason', error)})") from None


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition -> (name, labels, value) per sample."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, rest = line.rpartition(" ")
        try:
            value = float(rest)
        except ValueError:
            continue
        if "{" in head:
            name, _, body = head.partition("{")
            labels = dict(_labels(body.rstrip("}")))
        else:
            name, labels = head.strip(), {}
        samples.append((name.strip(), labels, value))
    return samples


def _labels(body: str):
    i = 0
    while i < len(body):
        eq = body.index("=", i)
        key = body[i:eq].strip().lstrip(",").strip()
        j = eq + 2  # past ="
        value = []
        while body[j] != '"':
            if body[j] == "\\":
                j += 1
            value.append(body[j])
            j += 1
        yield key, "".join(value)
        i = j + 1


def metric_sum(samples, name: str) -> float | None:
    found = [value for n, _, value in samples if n == name]
    return sum(found) if found else None


def metrics(settings: Settings):
    status, text = get(f"{settings.url}/metrics")
    if status != 200:
        raise ProbeError(f"{settings.url}/metrics answered HTTP {status}")
    return parse_metrics(text)


# -- the steps ---------------------------------------------------------------------------------


def concurrency(samples, settings: Settings) -> int:
    """min(what the KV cache holds of such requests, max_num_seqs), at least 1."""
    limits = []
    for name, labels, _ in samples:
        if name == "vllm:cache_config_info":
            blocks = _int(labels.get("num_gpu_blocks"))
            size = _int(labels.get("block_size"))
            if blocks and size:
                per_request = math.ceil((settings.input_tokens + settings.output_tokens) / size)
                limits.append(blocks // per_request)
            break
    seqs = metric_sum(samples, "kaito_max_concurrent_requests")
    if seqs:
        limits.append(int(seqs))
    return max(1, min(limits)) if limits else 1


def _int(text: str | None) -> int | None:
    try:
        return int(float(text)) if text not in (None, "", "None") else None
    except ValueError:
        return None


def tokenizer_folder(settings: Settings) -> str:
    if settings.processor:
        return settings.processor
    if Path(KAITO_WEIGHTS, "config.json").is_file():
        return KAITO_WEIGHTS
    status, text = get(f"{settings.url}/v1/models")
    try:
        root = json.loads(text)["data"][0]["root"] if status == 200 else None
    except (ValueError, KeyError, IndexError, TypeError):
        root = None
    if root and Path(root).is_dir():
        return root
    raise ProbeError("no tokenizer: set KAITO_PROCESSOR, or serve a model folder that holds one")


def run_guidellm(settings: Settings, rate: int, tokenizer: str, report: Path) -> dict:
    command = [
        sys.executable, "-m", "guidellm", "run",
        "--backend", f"kind=openai_http,target={settings.url}",
        "--profile", f"kind=throughput,max_concurrency={rate}",
        "--constraint", f"kind=max_duration,seconds={settings.duration}",
        "--data", f"kind=synthetic_text,prompt_tokens={settings.input_tokens},output_tokens={settings.output_tokens}",
        "--tokenizer", f"kind=huggingface_auto,model={tokenizer}",
        "--output", f"kind=json,path={report}",
        "--disable-console",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=settings.duration + 300)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"guidellm did not finish within {settings.duration + 300} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines() or ["no output"])[-1]
        if "No module named guidellm" in done.stderr:
            last = "guidellm is not installed in this image (python3 -m pip install 'guidellm==0.8.1')"
        raise ProbeError(f"guidellm exited {done.returncode}: {last.strip()}")
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError) as error:
        raise ProbeError(f"guidellm wrote no readable report ({error})") from None


def latencies(report: dict) -> tuple[float, float, int]:
    """TTFT and TPOT means (ms) of the successful requests, and how many succeeded."""
    try:
        m = report["benchmarks"][-1]["metrics"]
        done = int(m["request_totals"]["successful"])
        ttft = float(m["time_to_first_token_ms"]["successful"]["mean"])
        tpot = float(m["time_per_output_token_ms"]["successful"]["mean"])
    except (KeyError, IndexError, TypeError, ValueError):
        raise ProbeError("guidellm's report has no latency figures") from None
    if done <= 0:
        raise ProbeError("no request of the benchmark succeeded")
    return ttft, tpot, done


def drain(settings: Settings) -> None:
    deadline = time.monotonic() + settings.drain_timeout
    while time.monotonic() < deadline:
        if not metric_sum(metrics(settings), "vllm:num_requests_running"):
            return
        time.sleep(1)
    raise ProbeError(f"requests were still running {settings.drain_timeout:g} s after the load stopped")


def tokens(samples) -> float:
    return sum(metric_sum(samples, name) or 0.0 for name in TOKEN_COUNTERS)


# -- output ------------------------------------------------------------------------------------


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def emit(tag: str, payload: dict) -> None:
    """``TAG <time> <json>`` through PID 1's stdout (what ``kubectl logs`` shows), else ours."""
    line = f"{tag} {utc_now()} {json.dumps(payload, separators=(',', ':'))}\n"
    try:
        with open(PID1_STDOUT, "a", encoding="utf-8") as out:
            out.write(line)
        return
    except OSError:
        pass
    sys.stdout.write(line)
    sys.stdout.flush()


def fail(message: str) -> int:
    print(f"{ME}: {message}", file=sys.stderr, flush=True)
    return 1


def main(env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    try:
        settings = Settings.from_env(env)
        status, _ = get(f"{settings.url}/health")
    except ProbeError as error:
        return fail(f"not ready: {error}")
    if status != 200:
        return fail(f"not ready: {settings.url}/health answered HTTP {status}")
    index = env.get("POD_INDEX", "").strip()
    if index and index != "0":
        print(f"{ME}: POD_INDEX={index}: a worker; the leader runs the benchmark", flush=True)
        return 0
    try:
        tokenizer = tokenizer_folder(settings)
        before = metrics(settings)
        rate = concurrency(before, settings)
        emit(CONFIG_TAG, {"duration_sec": settings.duration, "input_tokens": settings.input_tokens,
                          "output_tokens": settings.output_tokens, "max_concurrency": rate})
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="kaito-benchmark-") as folder:
            report = run_guidellm(settings, rate, tokenizer, Path(folder) / "report.json")
        ttft, tpot, _ = latencies(report)
        drain(settings)
        elapsed = time.monotonic() - started
        tpm = (tokens(metrics(settings)) - tokens(before)) * 60 / elapsed
    except ProbeError as error:
        emit(RESULT_TAG, FAILED)
        return fail(f"benchmark failed: {error}")
    emit(RESULT_TAG, {"vllm_total_tpm": round(tpm, 2), "ttft_avg_ms": round(ttft, 2), "tpot_avg_ms": round(tpot, 2)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

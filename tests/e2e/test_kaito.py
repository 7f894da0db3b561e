"""KAITO's image contract through real vLLM on the CPU, one server for all of it (issue 19):

- the benchmark startup probe (entrypoints/kaito/benchmark_entrypoint.py) fails while the model
  loads and passes once it is ready, and its two lines, read back with a parser written from
  KAITO's format, appear on PID 1's stdout;
- the 429 guard: a burst beyond twice --max-num-seqs gets some 429s with KAITO's body, /health,
  /metrics and /v1/models are never limited, and kaito_ratelimit_rejected_total equals the 429s;
- draining on stop: SIGTERM while streaming requests are in flight, every one completes, and
  kaito-run exits 0 within the grace period.

The server and the probe run in a PID namespace of their own (``unshare --pid --fork
--mount-proc``), with tests/support/pid1_harness.py as PID 1, so the probe's write to
/proc/1/fd/1 lands in the harness's stdout and never on this machine's init. The tests run in
file order on the one server: probe, guard, then the drain, which stops it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from kaito_runtime.launch.vllm_install import detect_vllm
from tests.support.ci import in_ci, missing, need_vllm
from tests.support.streams import start_streams
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "models" / "tiny-llama"
KAITO_RUN = Path(sys.executable).parent / "kaito-run"
PROBE = REPO / "entrypoints" / "kaito" / "benchmark_entrypoint.py"
HARNESS = REPO / "tests" / "support" / "pid1_harness.py"
MAX_NUM_SEQS = 2
GRACE = 40
READY_TIMEOUT = 480

need_vllm(detect_vllm() is not None and KAITO_RUN.exists())
if shutil.which("unshare") is None:
    missing("unshare (util-linux) is missing: the probe must not write to this machine's PID 1", module_level=True)

# KAITO's log line, as the controller reads it from the pod's log: TAG <UTC ISO time> <JSON>.
KAITO_LINE = re.compile(r"^(KAITO_BENCHMARK_CONFIG|KAITO_BENCHMARK_RESULT) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) (\{.*\})$")


def kaito_lines(lines: list[str]) -> dict[str, dict]:
    """The last CONFIG and RESULT payloads in a log, as KAITO's controller takes them."""
    found = {}
    for line in lines:
        match = KAITO_LINE.match(line)
        if match:
            found[match.group(1)] = json.loads(match.group(3))
    return found


def post(url: str, payload: dict, timeout: float = 120) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def rejected_total(base: str) -> float:
    text = get(f"{base}/metrics")[1].decode()
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith("kaito_ratelimit_rejected_total")]
    return sum(values)


class Pod:
    """The namespace: its PID 1's stdout lines (the pod's log), and how to stop it."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stop_file = tmp / "stop"
        self.lines: list[str] = []
        self.log = tmp / "pid1-stdout.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE"))}
        env.update(
            HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
            KAITO_BENCHMARK_URL=self.base, KAITO_BENCHMARK_DURATION="4",
            KAITO_BENCHMARK_INPUT_TOKENS="48", KAITO_BENCHMARK_OUTPUT_TOKENS="16", KAITO_BENCHMARK_DRAIN_TIMEOUT="60",
        )
        argv = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(HARNESS), str(self.stop_file), str(PROBE),
                "--", str(KAITO_RUN), "--model", str(TINY_MODEL), "--host", "127.0.0.1", "--port", str(self.port),
                "--grace-period", str(GRACE), "--", "--max-model-len", "512", "--max-num-seqs", str(MAX_NUM_SEQS)]
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                out.write(line)
                out.flush()

    def wait_for(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((line for line in self.lines if line.startswith(prefix)), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        pytest.fail(f"no '{prefix}' in the pod's log after {timeout} s:\n" + "\n".join(self.lines[-60:]))

    def kaito_run(self) -> psutil.Process:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if any("kaito-run" in part for part in child.cmdline()[:2]):
                    return child
            except psutil.NoSuchProcess:
                continue
        pytest.fail("kaito-run is not running in the namespace")

    def stop(self) -> None:
        self.stop_file.touch()
        try:
            self.proc.wait(GRACE + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def pod(tmp_path_factory):
    pod = Pod(tmp_path_factory.mktemp("e2e-kaito"))
    try:
        pod.wait_for("HARNESS probing-done", READY_TIMEOUT)
        yield pod
    finally:
        pod.stop()


def test_the_benchmark_probe_fails_while_loading_then_writes_kaitos_lines_on_pid1(pod):
    if importlib.util.find_spec("guidellm") is None and not in_ci():
        pytest.skip("guidellm is not installed (scripts/setup.sh installs the bench extra)")
    probes = [line.split() for line in pod.lines if line.startswith("HARNESS probe ")]
    codes = [int(p[2]) for p in probes]
    assert codes[0] == 1, "the first probe runs before vLLM is up"  # kubelet retries it
    assert codes[-1] == 0, "\n".join(pod.lines[-40:])
    assert any("not ready" in line for line in pod.lines)  # the failing runs said why, in one line
    found = kaito_lines(pod.lines)
    config, result = found["KAITO_BENCHMARK_CONFIG"], found["KAITO_BENCHMARK_RESULT"]
    assert config == {"duration_sec": 4, "input_tokens": 48, "output_tokens": 16, "max_concurrency": MAX_NUM_SEQS}
    assert set(result) == {"vllm_total_tpm", "ttft_avg_ms", "tpot_avg_ms"}
    assert result["vllm_total_tpm"] > 0 and result["ttft_avg_ms"] > 0 and result["tpot_avg_ms"] > 0
    assert not any("Traceback" in line for line in pod.lines if "benchmark" in line)
    print(f"probe: {len(codes)} runs, passed at {probes[-1][3]} s; {config}; {result}")


def test_a_burst_gets_kaitos_429_and_the_counter_equals_the_rejections(pod):
    before = rejected_total(pod.base)
    payload = {"model": "tiny-llama", "prompt": "def main():", "max_tokens": 120, "ignore_eos": True, "temperature": 0}

    def completion(_):
        return post(f"{pod.base}/v1/completions", payload)

    def never_limited(_):
        time.sleep(0.3)  # inside the burst
        return [get(f"{pod.base}{path}")[0] for path in ("/health", "/metrics", "/v1/models")]

    with ThreadPoolExecutor(16) as pool:
        burst = [pool.submit(completion, i) for i in range(12)]
        side = [pool.submit(never_limited, i) for i in range(3)]
        answers = [f.result() for f in burst]
        others = [f.result() for f in side]
    statuses = [status for status, _ in answers]
    assert statuses.count(429) > 0 and statuses.count(200) >= MAX_NUM_SEQS, statuses
    assert set(statuses) <= {200, 429}
    for status, body in answers:
        if status == 429:
            error = json.loads(body)["error"]
            assert re.fullmatch(rf"Too many requests: waiting queue \(\d+\) exceeds max-num-seqs \({MAX_NUM_SEQS}\)\.",
                                error["message"]), error
            assert (error["type"], error["param"], error["code"]) == ("requests", None, "rate_limit_exceeded")
    assert others == [[200, 200, 200]] * 3
    assert rejected_total(pod.base) - before == statuses.count(429)
    print(f"429 guard: {statuses.count(429)} of {len(statuses)} rejected, counter +{rejected_total(pod.base) - before:g}")


def test_sigterm_drains_streaming_requests_and_kaito_run_exits_0_within_the_grace_period(pod):
    payload = {"model": "tiny-llama", "prompt": "import os", "max_tokens": 400, "ignore_eos": True, "temperature": 0,
               "stream": True, "stream_options": {"include_usage": True}}
    first_chunk, results, threads = start_streams(pod.base, payload, 3, timeout=GRACE + 30)
    for event in first_chunk[:MAX_NUM_SEQS]:
        assert event.wait(60)
    launcher = pod.kaito_run()
    signalled = time.monotonic()
    launcher.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(GRACE + 30)
    pod.wait_for("HARNESS server-exit", GRACE + 10)
    stopped_in = time.monotonic() - signalled
    exit_line = next(line for line in pod.lines if line.startswith("HARNESS server-exit"))
    # Every request sent before the stop (two running, one waiting for a slot) got all its tokens.
    assert all("error" not in r and r["finish"] == "length" and r["tokens"] == 400 for r in results), results
    assert exit_line == "HARNESS server-exit 0" and stopped_in < GRACE, (exit_line, stopped_in, pod.lines[-30:])
    print(f"drain: SIGTERM to exit {stopped_in:.1f} s, grace {GRACE} s, {len(results)} streams of 400 tokens finished")
    assert any("draining in-flight requests" in line or "mode=drain" in line for line in pod.lines)

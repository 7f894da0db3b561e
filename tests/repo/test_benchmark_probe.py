"""KAITO's startup probe (entrypoints/kaito/benchmark_entrypoint.py) against a fake vLLM on
loopback: not ready, a worker, the concurrency it picks, the -1 line on failure, bad input.

Every run of the script as a program happens in a PID namespace of its own (``unshare --pid
--fork --mount-proc``): there it is PID 1, so its write to /proc/1/fd/1 is its own stdout and
never this machine's init. The run through real vLLM is in tests/e2e/test_kaito.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from tests.support.ci import missing

REPO = Path(__file__).resolve().parents[2]
PROBE = REPO / "entrypoints" / "kaito" / "benchmark_entrypoint.py"

_spec = importlib.util.spec_from_file_location("kaito_benchmark_entrypoint", PROBE)
probe = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = probe
_spec.loader.exec_module(probe)

METRICS = """# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",num_gpu_blocks="1000",model_name="m"} 1.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 120.0
vllm:generation_tokens_total{engine="0",model_name="m"} 30.0
kaito_max_concurrent_requests 8.0
"""


def needs_unshare() -> None:
    if shutil.which("unshare") is None:
        missing("unshare (util-linux) is missing: the probe must not write to this machine's PID 1")


class FakeVllm(BaseHTTPRequestHandler):
    health = 200
    metrics = METRICS
    root = "/nonexistent"

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/health":
            self._send(self.health, b"")
        elif self.path == "/metrics":
            self._send(200, self.metrics.encode())
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "m", "root": self.root}]}).encode())
        else:
            self._send(404, b"")

    def do_POST(self):  # noqa: N802
        self._send(500, b'{"error":"broken"}')

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    FakeVllm.health = 200


def run_probe(env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    needs_unshare()
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, str(PROBE)],
                          env=full, capture_output=True, text=True, timeout=timeout)


def test_prometheus_text_and_the_concurrency_kaito_picks():
    samples = probe.parse_metrics(METRICS)
    assert probe.metric_sum(samples, "vllm:prompt_tokens_total") == 120.0
    settings = probe.Settings("http://x", 60, 2048, 256, 300, None)
    # 1000 blocks / ceil(2304 / 16) = 6 requests fit the KV cache; max_num_seqs 8
    assert probe.concurrency(samples, settings) == 6
    short = probe.Settings("http://x", 60, 48, 16, 300, None)
    assert probe.concurrency(samples, short) == 8  # now max_num_seqs is the bound
    assert probe.concurrency([], settings) == 1


def test_not_ready_is_exit_1_with_one_line_and_no_kaito_lines(fake):
    FakeVllm.health = 503
    done = run_probe({"KAITO_BENCHMARK_URL": f"http://127.0.0.1:{fake.server_port}"})
    assert done.returncode == 1 and "KAITO_BENCHMARK" not in done.stdout
    assert done.stderr.strip().splitlines() == [f"benchmark_entrypoint.py: not ready: http://127.0.0.1:{fake.server_port}/health answered HTTP 503"]


def test_no_server_at_all_is_exit_1_without_a_traceback():
    done = run_probe({"KAITO_BENCHMARK_URL": "http://127.0.0.1:9"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "not ready" in done.stderr


def test_a_worker_exits_0_at_once(fake):
    done = run_probe({"KAITO_BENCHMARK_URL": f"http://127.0.0.1:{fake.server_port}", "POD_INDEX": "1"})
    assert done.returncode == 0 and "KAITO_BENCHMARK" not in done.stdout


def test_a_bad_duration_is_one_line():
    done = run_probe({"KAITO_BENCHMARK_DURATION": "soon"})
    assert done.returncode == 1 and "KAITO_BENCHMARK_DURATION=soon: must be a whole number above 0" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_failed_benchmark_still_writes_the_result_line_with_minus_one(fake, tmp_path):
    """A server whose completions all fail: guidellm (the real one) fails, and the line is -1."""
    shutil.copytree(REPO / "models" / "tiny-llama", tmp_path / "weights")
    FakeVllm.root = str(tmp_path / "weights")  # the tokenizer is found in the folder vLLM serves
    done = run_probe({"KAITO_BENCHMARK_URL": f"http://127.0.0.1:{fake.server_port}", "KAITO_BENCHMARK_DURATION": "2",
                      "KAITO_BENCHMARK_INPUT_TOKENS": "16", "KAITO_BENCHMARK_OUTPUT_TOKENS": "4"}, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("KAITO_BENCHMARK")]
    assert len(lines) == 2
    config = re.match(r"KAITO_BENCHMARK_CONFIG \d{4}-\d\d-\d\dT[\d:.]+Z (\{.*\})$", lines[0])
    assert json.loads(config.group(1)) == {"duration_sec": 2, "input_tokens": 16, "output_tokens": 4, "max_concurrency": 8}
    result = re.match(r"KAITO_BENCHMARK_RESULT \d{4}-\d\d-\d\dT[\d:.]+Z (\{.*\})$", lines[1])
    assert json.loads(result.group(1)) == {"vllm_total_tpm": -1, "ttft_avg_ms": -1, "tpot_avg_ms": -1}
    assert "benchmark failed" in done.stderr and "Traceback" not in done.stderr


def test_the_tokenizer_is_kaito_processor_else_the_folder_vllm_serves(fake, tmp_path):
    url = f"http://127.0.0.1:{fake.server_port}"
    assert probe.tokenizer_folder(probe.Settings(url, 60, 2048, 256, 300, "/models/tok")) == "/models/tok"
    FakeVllm.root = str(tmp_path)
    assert probe.tokenizer_folder(probe.Settings(url, 60, 2048, 256, 300, None)) == str(tmp_path)
    FakeVllm.root = str(tmp_path / "gone")
    with pytest.raises(probe.ProbeError, match="set KAITO_PROCESSOR"):
        probe.tokenizer_folder(probe.Settings(url, 60, 2048, 256, 300, None))

"""A real Prometheus scrapes a real launch: `kaito-run` downloads the tiny model from the hub
emulator (throttled) and starts real vLLM on the CPU, while Prometheus (Debian's package,
started here on loopback, scrape interval 1 s) scrapes the launcher's metrics port. The test
asks Prometheus's HTTP API what it saw.

User stories:
- An operator's Prometheus sees the download's remaining seconds fall, and every phase's
  duration, from a target that exists before vLLM does.
- A probe on the API port sees the launcher's 503 with the phase, then (while vLLM builds its
  engine) nothing, then vLLM's 200: the hand-over, measured.
- SIGTERM ends the pod with exit 0 and says so in the termination message.

One launch for all of it (real vLLM on 2 shared cores). Without the `prometheus` binary the test
skips with the reason, except under CI (CI=true), where it fails (scripts/test-deps.sh installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.ci import missing, need_vllm
from tests.support.steps import detect_vllm
from tests.support.ports import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "models" / "tiny-llama"
REPO_ID = "kaito-test/tiny-llama"
KAITO_RUN = Path(sys.executable).parent / "kaito-run"
READY_TIMEOUT = 300
RATE = 150_000  # bytes per second: the 1.7 MiB model takes about 12 s, a dozen scrapes

need_vllm(detect_vllm() is not None and KAITO_RUN.exists())

PROMETHEUS = shutil.which("prometheus")
if PROMETHEUS is None:
    missing("the prometheus binary is not installed (apt-get install prometheus; scripts/test-deps.sh)", module_level=True)


def fetch(url: str, timeout: float = 5.0) -> tuple[int | None, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()
    except (OSError, urllib.error.URLError):
        return None, {}, b""


class Prometheus:
    def __init__(self, tmp: Path, target: str) -> None:
        self.port = free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, scrape_timeout: 900ms, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: kaito-run\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = tmp / "prometheus.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
                stdout=out, stderr=subprocess.STDOUT, cwd=tmp,
            )
        deadline = time.monotonic() + 60
        while fetch(f"{self.url}/-/ready")[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str, **params: str) -> list[dict]:
        path = "/api/v1/query_range" if "start" in params else "/api/v1/query"
        query = urllib.parse.urlencode({"query": expr, **params})
        code, _, body = fetch(f"{self.url}{path}?{query}")
        assert code == 200, body
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class ApiProbe:
    """GET /health on the API port every 20 ms: who answered (the launcher names its phase in
    X-Kaito-Phase, vLLM does not), or nobody (refused)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: list[tuple[float, str, int | None]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop.is_set():
            code, headers, _ = fetch(f"http://127.0.0.1:{self.port}/health", timeout=1.0)
            who = "" if code is None else ("launcher" if "X-Kaito-Phase" in headers else "vllm")
            self.seen.append((time.monotonic(), who, code))
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """One launch, watched by Prometheus and by the API-port probe from before it starts to its end."""
    from tests.support.hub_emulator import HubEmulator

    tmp = tmp_path_factory.mktemp("observe-e2e")
    (tmp / "hub").mkdir()
    shutil.copytree(TINY_MODEL, tmp / "hub" / REPO_ID)
    hub = HubEmulator(tmp / "hub", lfs_threshold=100_000)
    hub.rate_limit_bps = RATE
    hub.start()
    port, metrics_port = free_port(), free_port()
    prometheus = Prometheus(tmp, f"127.0.0.1:{metrics_port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_XET="1", HF_ENDPOINT=hub.url, PYTHONUNBUFFERED="1",
               KAITO_TERMINATION_LOG=str(tmp / "termination-log"))
    probe = ApiProbe(port)
    err = tmp / "stderr.log"
    began = time.time()
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [str(KAITO_RUN), "--preset", REPO_ID, "--host", "127.0.0.1", "--port", str(port),
             "--metrics-port", str(metrics_port), "--weights-dir", str(tmp / "weights"), "--grace-period", "20",
             "--", "--max-model-len", "256"],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while fetch(f"http://127.0.0.1:{metrics_port}/startupz")[0] != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kaito-run not ready (exit {proc.poll()}):\n{err.read_text()[-4000:]}")
            time.sleep(0.5)
        time.sleep(3.0)  # a few scrapes of the ready state
        ready_body = json.loads(fetch(f"http://127.0.0.1:{metrics_port}/startupz")[2])
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        probe.stop()
        yield {"prometheus": prometheus, "probe": probe, "code": code, "began": began, "ready": ready_body,
               "termination": tmp / "termination-log", "stderr": err}
    finally:
        probe.stop()
        if proc.poll() is None:
            proc.kill()
        prometheus.stop()
        hub.stop()


def test_prometheus_saw_the_remaining_seconds_fall_during_the_download(watched):
    prometheus = watched["prometheus"]
    window = {"start": f"{watched['began']:.3f}", "end": f"{time.time():.3f}", "step": "1"}
    for name in ("kaito_model_download_remaining_seconds", "kaito_launcher_weights_remaining_seconds"):
        (series,) = prometheus.query(name, **window)
        values = [float(v) for _, v in series["values"]]
        known = [v for v in values if v > 0]
        assert len(known) >= 3, values
        assert known[-1] < known[0], values  # falling while the bytes arrive
        assert values[-1] == 0.0  # done
    (speed,) = prometheus.query("max_over_time(kaito_model_download_speed_bytes_per_second[5m])")
    assert 0.3 * RATE < float(speed["value"][1]) < 3 * RATE


def test_prometheus_has_every_phase_duration_and_saw_each_phase(watched):
    prometheus = watched["prometheus"]
    durations = {r["metric"]["phase"]: float(r["value"][1])
                 for r in prometheus.query("last_over_time(kaito_launcher_phase_duration_seconds[10m])")}
    assert set(durations) == {"resolve", "inventory", "plan", "weights", "vllm_start"}, durations
    assert durations["weights"] > 5.0  # the throttled download
    seen = {r["metric"]["phase"] for r in prometheus.query("max_over_time(kaito_launcher_phase[10m]) == 1")}
    assert {"weights", "vllm_start", "ready"} <= seen, seen
    (ready,) = prometheus.query("max_over_time(kaito_launcher_ready[10m])")
    assert ready["value"][1] == "1"
    kv = {r["metric"]["source"]: float(r["value"][1])
          for r in prometheus.query("last_over_time(kaito_launcher_plan_kv_cache_tokens[10m])")}
    assert set(kv) == {"plan", "vllm"} and kv["vllm"] > 0
    assert watched["ready"]["phases"].keys() == durations.keys()


def test_the_api_port_passes_from_the_launcher_to_vllm_with_one_gap(watched):
    seen = watched["probe"].seen
    who = [w for _, w, _ in seen]
    assert "launcher" in who and "vllm" in who, who[:20]
    first_vllm = who.index("vllm")
    last_launcher = max(i for i, w in enumerate(who) if w == "launcher")
    assert last_launcher < first_vllm  # never back to the launcher once vLLM answered
    assert all(code == 503 for _, w, code in seen if w == "launcher")
    # between them: refused only (vLLM has bound the port and builds its engine)
    assert set(who[last_launcher + 1 : first_vllm]) <= {""}
    gap = seen[first_vllm][0] - seen[last_launcher][0]
    print(f"\nAPI port hand-over: last launcher answer -> first vLLM answer: {gap:.2f} s")
    assert watched["code"] == 0


def test_sigterm_is_the_termination_message(watched):
    message = watched["termination"].read_text()
    assert message.startswith("stopped by SIGTERM") and message.endswith("(exit 0)\n"), message

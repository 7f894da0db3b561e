"""The launcher's own HTTP through a real server on loopback: /health, /startupz and /metrics in
every phase, on the metrics port and on the API port before the hand-over; the metrics text
parses with prometheus-client's own parser; a release frees the port at once."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kaito_runtime.observe import Observer, ObserveOptions
from kaito_runtime.observe.metrics import METRICS
from kaito_runtime.observe.server import StatusServer
from kaito_runtime.observe.status import Phase, StartupStatus, TIMED_PHASES
from kaito_runtime.secrets import register_secret


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def families(text: str) -> dict[str, object]:
    return {family.name: family for family in text_string_to_metric_families(text)}


@pytest.fixture
def served():
    status = StartupStatus()
    metrics = StatusServer(status, "127.0.0.1", 0, "metrics").start()
    api = StatusServer(status, "127.0.0.1", 0, "api").start()
    yield status, metrics, api
    metrics.release()
    api.release()


@pytest.mark.parametrize("phase", list(Phase), ids=lambda p: p.value)
def test_every_endpoint_answers_in_every_phase(served, phase):
    status, metrics, api = served
    if phase is not Phase.STARTING:
        status.enter(phase)
    ready = phase is Phase.READY
    for server in (metrics, api):
        code, headers, body = get(server.port, "/startupz")
        assert code == (200 if ready else 503)
        payload = json.loads(body)
        assert payload["phase"] == phase.value and headers["X-Kaito-Phase"] == phase.value
        code, _, body = get(server.port, "/health")
        if server is metrics and ready:
            assert code == 200
        else:
            assert code == 503  # the API port is vLLM's once it is ready; before, never healthy
        assert body.decode().startswith(phase.value + ":")
        code, headers, body = get(server.port, "/metrics")
        assert code == 200 and headers["Content-Type"].startswith("text/plain")
        found = families(body.decode())
        current = [s for s in found["kaito_launcher_phase"].samples if s.value == 1.0]
        assert [s.labels["phase"] for s in current] == [phase.value]


def test_the_metrics_text_parses_and_holds_every_documented_metric(served):
    status, metrics, _ = served
    status.enter(Phase.RESOLVE)
    status.enter(Phase.PLAN)
    status.group.state("meeting")
    status.vllm_exited("failed")
    code, _, body = get(metrics.port, "/metrics")
    found = families(body.decode())
    assert set(METRICS) <= set(found), set(METRICS) - set(found)
    assert found["kaito_launcher_vllm_exits"].type == "counter"
    failed = [s for s in found["kaito_launcher_vllm_exits"].samples if s.labels.get("reason") == "failed"]
    assert failed[0].value == 1.0
    durations = {s.labels["phase"] for s in found["kaito_launcher_phase_duration_seconds"].samples}
    assert durations == {"resolve"}
    assert {s.labels["phase"] for s in found["kaito_launcher_phase"].samples} == {p.value for p in Phase}
    # KAITO's two gauges: -1 before a download
    assert found["kaito_model_download_remaining_seconds"].samples[0].value == -1.0
    assert found["kaito_model_download_speed_bytes_per_second"].samples[0].value == -1.0
    assert "process_cpu_seconds" in found


def test_other_paths_are_404_and_head_answers_without_a_body(served):
    _, metrics, _ = served
    assert get(metrics.port, "/v1/models")[0] == 404
    request = urllib.request.Request(f"http://127.0.0.1:{metrics.port}/startupz", method="HEAD")
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=5)
    assert answer.value.code == 503 and answer.value.read() == b""


def send(port: int, path: str, method: str, payload: bytes | None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=payload, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_a_request_before_the_hand_over_is_told_to_retry_and_the_metrics_port_allows_only_reads(served, method):
    status, metrics, api = served
    status.enter(Phase.WEIGHTS)
    chat = json.dumps({"model": "m", "messages": [{"role": "user", "content": "Hello"}]}).encode()
    code, headers, body = send(api.port, "/v1/chat/completions", method, chat)
    assert code == 503 and headers["Retry-After"] == "5" and headers["X-Kaito-Phase"] == "weights"
    error = json.loads(body)["error"]
    assert error["code"] == 503 and error["type"] == "ServiceUnavailable"
    assert error["message"].startswith("the model is not served yet (weights: not ready yet")
    assert get(api.port, "/health")[0] == 503  # the connection's next request is still answered

    code, headers, body = send(metrics.port, "/metrics", method, chat)
    assert code == 405 and headers["Allow"] == "GET, HEAD"


def test_a_release_frees_the_port_at_once_for_a_server_that_binds_as_vllm_does():
    status = StartupStatus()
    server = StatusServer(status, "127.0.0.1", 0, "api").start()
    port = server.port
    assert get(port, "/health")[0] == 503
    server.release()
    vllm_like = socket.socket()
    vllm_like.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    vllm_like.bind(("127.0.0.1", port))  # at once, no retry: the port is free
    vllm_like.listen()
    vllm_like.close()
    assert server.release() == 0.0  # idempotent


def test_no_registered_secret_leaves_through_any_body():
    secret = "hf_ObserveSecret_9c1d5e7f3a"
    register_secret(secret)
    status = StartupStatus()
    status.describe(model=f"org/{secret}")  # a name that happens to hold it
    server = StatusServer(status, "127.0.0.1", 0, "metrics").start()
    try:
        for path in ("/metrics", "/startupz", "/health", "/nope"):
            assert secret not in get(server.port, path)[2].decode()
    finally:
        server.release()


def test_the_observer_moves_its_hold_and_a_busy_metrics_port_is_only_a_warning(caplog):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    try:
        with Observer(ObserveOptions("127.0.0.1", busy, True)) as observer:
            assert observer.metrics is None
            assert "cannot be served" in caplog.text
            observer.hold_api_port("127.0.0.1", 0)
            first = observer.holder
            assert first is not None and observer.holds("127.0.0.1", 0)
            observer.release_api_port("test")
            assert not first.serving and observer.holder is None
    finally:
        blocker.close()


def test_timed_phases_are_the_documented_steps():
    assert [p.value for p in TIMED_PHASES] == ["resolve", "inventory", "plan", "weights", "group", "vllm_start"]


def test_operations_md_documents_every_metric_endpoint_and_option():
    from pathlib import Path

    from kaito_runtime.observe.metrics import METRICS

    text = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    counters = {"kaito_launcher_group_restarts", "kaito_launcher_vllm_exits"}
    for name in METRICS:
        shown = f"`{name}_total`" if name in counters else f"`{name}`"
        assert shown in text, name
    for word in ("`/metrics`", "`/startupz`", "`/health`", "`--metrics-port`", "`KAITO_METRICS_PORT`",
                 "`--termination-log PATH`", "`KAITO_TERMINATION_LOG`", "`--no-startup-http`", "`X-Kaito-Phase"):
        assert word in text, word
    for phase in Phase:
        assert f"`{phase.value}`" in text, phase

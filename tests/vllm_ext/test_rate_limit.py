"""KAITO's 429 guard (kaito_runtime/vllm_ext/rate_limit.py) as a plain ASGI app around a fake
one: the rule, the paths, the body and the counter. Real vLLM: tests/e2e/test_kaito.py."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from prometheus_client import REGISTRY

from kaito_runtime.vllm_ext import rate_limit
from kaito_runtime.vllm_ext.rate_limit import GUARDED_PATHS, RateLimitMiddleware, queue_depth, rejection_body

KAITO_BODY = (
    '{"error":{"message":"Too many requests: waiting queue (5) exceeds max-num-seqs (2).",'
    '"type":"requests","param":null,"code":"rate_limit_exceeded"}}'
)


def rejected_total() -> float:
    return REGISTRY.get_sample_value("kaito_ratelimit_rejected_total") or 0.0


class SlowApp:
    """Answers 200 after ``release`` is set, so requests stay in flight."""

    def __init__(self):
        self.release = asyncio.Event()
        self.served = 0

    async def __call__(self, scope, receive, send):
        await self.release.wait()
        self.served += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(app, path, app_state=None):
    sent = []
    scope = {"type": "http", "path": path, "method": "POST"}
    if app_state is not None:
        scope["app"] = SimpleNamespace(state=app_state)

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return status, body


def test_kaitos_body_byte_for_byte_and_the_depth_rule():
    assert rejection_body(5, 2).decode() == KAITO_BODY
    assert queue_depth(waiting=0, in_flight=5, threshold=2) == 3
    assert queue_depth(waiting=7, in_flight=1, threshold=2) == 7


def test_a_burst_beyond_twice_max_num_seqs_gets_429_and_the_counter_counts_them():
    async def scenario():
        inner = SlowApp()
        guard = RateLimitMiddleware(inner, threshold=2)
        before = rejected_total()
        tasks = [asyncio.create_task(call(guard, "/v1/chat/completions")) for _ in range(5)]
        await asyncio.sleep(0.05)  # five in flight: depth 5 - 2 = 3 > 2 for the next one
        assert guard.in_flight == 5
        status, body = await call(guard, "/v1/completions")
        assert status == 429
        error = json.loads(body)["error"]
        assert error["code"] == "rate_limit_exceeded" and error["type"] == "requests" and error["param"] is None
        assert error["message"] == "Too many requests: waiting queue (3) exceeds max-num-seqs (2)."
        for path in ("/health", "/metrics", "/v1/models"):  # never limited: answered by the inner app
            inner.release.set()
            assert (await call(guard, path))[0] == 200
        results = await asyncio.gather(*tasks)
        assert [s for s, _ in results] == [200] * 5 and guard.in_flight == 0
        assert rejected_total() - before == 1
        assert (await call(guard, "/v1/completions"))[0] == 200  # the queue drained: served again

    asyncio.run(scenario())


def test_the_threshold_comes_from_the_environment_else_from_vllms_app_state(monkeypatch):
    monkeypatch.setenv(rate_limit.THRESHOLD_ENV, "7")
    assert RateLimitMiddleware(SlowApp()).threshold == 7
    assert REGISTRY.get_sample_value("kaito_max_concurrent_requests") == 7
    monkeypatch.delenv(rate_limit.THRESHOLD_ENV)

    async def scenario():
        inner = SlowApp()
        inner.release.set()
        guard = RateLimitMiddleware(inner)
        assert guard.threshold is None
        state = SimpleNamespace(vllm_config=SimpleNamespace(scheduler_config=SimpleNamespace(max_num_seqs=3)))
        assert (await call(guard, "/health", state))[0] == 200
        assert guard.threshold == 3 and REGISTRY.get_sample_value("kaito_max_concurrent_requests") == 3

    asyncio.run(scenario())


def test_unknown_threshold_leaves_the_guard_open():
    async def scenario():
        inner = SlowApp()
        inner.release.set()
        guard = RateLimitMiddleware(inner)
        statuses = [(await call(guard, "/v1/completions"))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]

    asyncio.run(scenario())


def test_kaitos_guarded_paths():
    assert GUARDED_PATHS == {"/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/tokenize", "/pooling",
                             "/score", "/rerank", "/v1/rerank"}

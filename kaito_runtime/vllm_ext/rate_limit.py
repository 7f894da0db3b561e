"""KAITO's 429 guard as a plain ASGI middleware for vLLM's ``--middleware`` flag.

KAITO's rule (kaito-image-contract.md section 4), unchanged:

- guarded paths: ``GUARDED_PATHS``; everything else (``/health``, ``/metrics``, ``/v1/models``,
  ...) passes untouched;
- threshold M = vLLM's resolved ``max_num_seqs``; depth = max(sum of ``vllm:num_requests_waiting``,
  guarded requests in flight - M); depth > M -> HTTP 429 with KAITO's JSON body, and
  ``kaito_ratelimit_rejected_total`` goes up by one;
- the gauge ``kaito_max_concurrent_requests`` = M (the benchmark probe reads it).

Both metrics live in prometheus_client's default registry, which vLLM's ``/metrics`` serves.

Where M comes from: ``KAITO_RATE_LIMIT_MAX_NUM_SEQS`` when the launcher knows it (the user gave
``--max-num-seqs``), else the config vLLM keeps on its app (``app.state.vllm_config``, read only),
else the guard stays open and says so once. Unlike vLLM's own ``--max-num-queued-reqs`` (503, a
count of queued requests in the engine), this answers 429 from the HTTP layer before the request
is parsed, as KAITO's clients and gateways expect.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

GUARDED_PATHS = frozenset(
    {
        "/v1/completions",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/tokenize",
        "/pooling",
        "/score",
        "/rerank",
        "/v1/rerank",
    }
)
THRESHOLD_ENV = "KAITO_RATE_LIMIT_MAX_NUM_SEQS"
WAITING_METRIC = "vllm:num_requests_waiting"
REJECTED_METRIC = "kaito_ratelimit_rejected"  # exposed as kaito_ratelimit_rejected_total
MAX_CONCURRENT_METRIC = "kaito_max_concurrent_requests"
_WAITING_CACHE_SECONDS = 0.05  # the registry is read at most this often under a burst

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("kaito_runtime.rate_limit")


def rejection_body(depth: int, threshold: int) -> bytes:
    """KAITO's 429 body, byte for byte."""
    return json.dumps(
        {
            "error": {
                "message": f"Too many requests: waiting queue ({depth}) exceeds max-num-seqs ({threshold}).",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        },
        separators=(",", ":"),
    ).encode()


def queue_depth(waiting: int, in_flight: int, threshold: int) -> int:
    """KAITO's depth: the engine's waiting queue, or the guarded requests in flight beyond M."""
    return max(waiting, in_flight - threshold)


def threshold_from_env(env: MutableMapping[str, str] | dict[str, str]) -> int | None:
    value = env.get(THRESHOLD_ENV, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if number > 0 else None


class _Metrics:
    """The counter and the gauge, created once per process in the default registry."""

    _instance: _Metrics | None = None

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.rejected = Counter(REJECTED_METRIC, "Requests answered 429 by KAITO's rate limit (queue deeper than max-num-seqs)")
        self.max_concurrent = Gauge(
            MAX_CONCURRENT_METRIC, "The resolved max_num_seqs: requests vLLM runs at once", multiprocess_mode="max"
        )

    @classmethod
    def get(cls) -> _Metrics:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance


def _waiting_requests() -> int:
    """Sum of vllm:num_requests_waiting over its label sets, from this process's registry."""
    from prometheus_client import REGISTRY

    total = 0.0
    for family in REGISTRY.collect():
        if family.name != WAITING_METRIC:
            continue
        total += sum(sample.value for sample in family.samples if sample.name == WAITING_METRIC)
    return int(total)


class RateLimitMiddleware:
    """``--middleware kaito_runtime.vllm_ext.rate_limit.RateLimitMiddleware``."""

    def __init__(self, app: ASGIApp, threshold: int | None = None) -> None:
        self.app = app
        self.threshold = threshold if threshold is not None else threshold_from_env(os.environ)
        self.in_flight = 0
        self._waiting = 0
        self._waiting_at = float("-inf")
        self._told_open = False
        self.metrics = _Metrics.get()
        if self.threshold is not None:
            self.metrics.max_concurrent.set(self.threshold)

    def _resolve_threshold(self, scope: Scope) -> int | None:
        if self.threshold is not None:
            return self.threshold
        app = scope.get("app")
        config = getattr(getattr(app, "state", None), "vllm_config", None)
        value = getattr(getattr(config, "scheduler_config", None), "max_num_seqs", None)
        if isinstance(value, int) and value > 0:
            self.threshold = value
            self.metrics.max_concurrent.set(value)
            log.info("KAITO rate limit: 429 when the queue is deeper than max-num-seqs %d", value)
        elif not self._told_open:
            self._told_open = True
            log.warning("KAITO rate limit: max-num-seqs is not known yet; requests are not limited until it is")
        return self.threshold

    def _waiting_now(self) -> int:
        now = time.monotonic()
        if now - self._waiting_at >= _WAITING_CACHE_SECONDS:
            self._waiting, self._waiting_at = _waiting_requests(), now
        return self._waiting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        threshold = self._resolve_threshold(scope)  # any request may be the first to see the app
        if threshold is None or scope.get("path") not in GUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        depth = queue_depth(self._waiting_now(), self.in_flight, threshold)
        if depth > threshold:
            self.metrics.rejected.inc()
            await _reject(send, rejection_body(depth, threshold))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


async def _reject(send: Send, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})

"""The launcher's own HTTP: /metrics, /startupz and /health, on two kinds of port.

* The metrics port (``--metrics-port``, default 5090) is served for the launcher's whole life,
  so Prometheus keeps one target whether vLLM is up or not, and a headless worker has a window.
* The API port is served only until vLLM takes it over: ``release()`` closes the listening
  socket (measured in tests/observe: well under a millisecond once called), and vLLM binds it
  a moment later. /health answers 503 with the phase there; vLLM answers /health itself once it
  listens.

Paths (GET; HEAD answers the same without a body):
  /metrics   Prometheus text format (observe.metrics)
  /startupz  JSON: phase, elapsed seconds, per-phase durations, progress; 200 once ready, else 503
  /health    metrics port: 200 once ready, else 503; API port (before the hand-over): always 503.
             The body is one line, ``<phase>: <reason>``; the header ``X-Kaito-Phase`` names the phase.
Everything else is 404. Every body is redacted (no registered secret leaves through here).
Other methods (a client's POST to /v1/chat/completions while the model loads): on the API port
503 with ``Retry-After`` and an OpenAI-style JSON error naming the phase, so a client retries
instead of giving up; on the metrics port 405 with ``Allow: GET, HEAD``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

from kaito_runtime.observe.metrics import CONTENT_TYPE, exposition, registry_for
from kaito_runtime.observe.status import Phase, StartupStatus
from kaito_runtime.secrets import redact

Role = Literal["metrics", "api"]
_POLL_S = 0.5  # serve_forever's poll interval (a release does not wait for it: the socket is shut down first)
_RETRY_AFTER_S = 5
_MAX_DRAINED_BYTES = 1 << 20  # a larger body is not read: the connection closes after the answer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True  # a port of a launcher that just stopped (TIME_WAIT) is free

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], family: int) -> None:
        self.address_family = family
        super().__init__(address, handler)


def _bind_address(host: str) -> tuple[str, int]:
    if host in ("", "0.0.0.0"):
        return "", socket.AF_INET
    if ":" in host:
        return host.strip("[]"), socket.AF_INET6
    return host, socket.AF_INET


class StatusServer:
    """One listening port answering from ``status``; ``start()`` binds (raises OSError when it
    cannot) and serves from a thread; ``release()`` stops listening at once and is idempotent."""

    def __init__(self, status: StartupStatus, host: str, port: int, role: Role, *, registry=None) -> None:
        self.status, self.role = status, role
        self.host, self.requested_port = host, port
        self._registry = registry if registry is not None else registry_for(status)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.released_at: float | None = None  # time.monotonic() of the release

    @property
    def registry(self):
        """The metrics registry this server answers /metrics from (shared by both ports)."""
        return self._registry

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    @property
    def serving(self) -> bool:
        return self._server is not None

    def start(self) -> StatusServer:
        address, family = _bind_address(self.host)
        self._server = _Server((address, self.requested_port), _handler_for(self), family)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": _POLL_S},
            name=f"kaito-{self.role}-http", daemon=True,
        )
        self._thread.start()
        return self

    def release(self) -> float:
        """Stop listening (the port is free when this returns); requests already accepted are
        still answered. Returns the seconds it took (0 when there was nothing to release)."""
        with self._lock:
            server, self._server = self._server, None
            if server is None:
                return 0.0
            began = time.monotonic()
            # Stop listening first (Linux frees a shut-down listener's port for a SO_REUSEADDR
            # bind at once); the descriptor stays open until the loop has stopped, so no later
            # socket can take its number while the loop still polls it.
            try:
                server.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                server.socket.close()
            self.released_at = time.monotonic()
            taken = self.released_at - began
        threading.Thread(target=_stop_loop, args=(server,), name="kaito-http-stop", daemon=True).start()
        return taken

    close = release

    def __enter__(self) -> StatusServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # --- answers -------------------------------------------------------------------------------

    def metrics_body(self) -> bytes:
        return redact(exposition(self._registry).decode("utf-8")).encode("utf-8")

    def health(self) -> tuple[int, str]:
        snap = self.status.snapshot()
        if self.role == "metrics" and snap.ready:
            return 200, f"{snap.phase.value}: vLLM is ready"
        if snap.phase in (Phase.STOPPING, Phase.EXITED):
            return 503, f"{snap.phase.value}: the launcher is stopping"
        return 503, f"{snap.phase.value}: not ready yet ({snap.phase_seconds:.0f} s in this phase, {snap.elapsed_seconds:.0f} s since start)"


def _stop_loop(server: _Server) -> None:
    try:
        server.shutdown()  # returns within one poll interval
    finally:
        server.server_close()


def _handler_for(owner: StatusServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "kaito-run"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._dispatch(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._dispatch(body=False)

        def do_POST(self) -> None:  # noqa: N802
            self._refuse()

        do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_POST  # noqa: N815

        def _refuse(self) -> None:
            self._drain_request_body()
            try:
                if owner.role == "api":
                    status, text = owner.health()
                    payload = {"error": {"message": redact(f"the model is not served yet ({text}); retry later"),
                                         "type": "ServiceUnavailable", "code": 503}}
                    self._answer(503, (json.dumps(payload) + "\n").encode(), "application/json", True,
                                 extra={"Retry-After": str(_RETRY_AFTER_S)})
                else:
                    text = "the launcher's status port answers GET and HEAD only\n"
                    self._answer(405, text.encode(), "text/plain; charset=utf-8", True, extra={"Allow": "GET, HEAD"})
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _drain_request_body(self) -> None:
            """Read what the client sent, so that the answer is not lost to a reset connection."""
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = 0
            if 0 < length <= _MAX_DRAINED_BYTES:
                self.rfile.read(length)
            elif length:
                self.close_connection = True

        def _dispatch(self, body: bool) -> None:
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._answer(200, owner.metrics_body(), CONTENT_TYPE, body)
                elif path == "/startupz":
                    status, payload = owner.status.startupz()
                    text = redact(json.dumps(payload, sort_keys=False)) + "\n"
                    self._answer(status, text.encode(), "application/json", body)
                elif path == "/health":
                    status, text = owner.health()
                    self._answer(status, (redact(text) + "\n").encode(), "text/plain; charset=utf-8", body)
                else:
                    text = "not found: the launcher serves /metrics, /startupz and /health here\n"
                    self._answer(404, text.encode(), "text/plain; charset=utf-8", body)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _answer(self, status: int, payload: bytes, content_type: str, body: bool,
                    extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (extra or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("X-Kaito-Phase", owner.status.phase.value)
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # probes and scrapes: not logged
            return

    return Handler

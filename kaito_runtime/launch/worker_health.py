"""The health endpoint of a headless worker: vLLM serves no HTTP there, so its launcher answers
``GET /health`` on the port the leader's API uses (default 5000), and every pod of a group can
have the same probe. 200 while this node's vLLM runs and the leader's heartbeat is fresh, 503
(with the reason as the body) otherwise."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HealthCheck = Callable[[], tuple[bool, str]]


class WorkerHealthServer:
    def __init__(self, host: str, port: int, check: HealthCheck) -> None:
        handler = _handler_for(check)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="worker-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> WorkerHealthServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler_for(check: HealthCheck) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?", 1)[0] != "/health":
                self._answer(404, "only /health is served on a worker node")
                return
            healthy, reason = check()
            self._answer(200 if healthy else 503, reason)

        def _answer(self, status: int, text: str) -> None:
            body = (text + "\n").encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not logged
            return

    return Handler

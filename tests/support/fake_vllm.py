"""A stand-in for `vllm serve` that behaves like it on the API port, for unit tests of the
launcher's own HTTP and its hand-over (tests/observe). Not vLLM: no model is loaded.

Like vLLM 0.32 it prints a banner line, binds the port (SO_REUSEADDR) right after it, builds
its "engine" (sleeps) while bound but not listening, then listens and answers /health (200),
/v1/models and /v1/completions; SIGTERM ends it with 0.

Environment:
  FAKE_VLLM_IMPORT_S   seconds before the banner (vLLM's imports; default 0.3)
  FAKE_VLLM_BIND_S     seconds between the banner and the bind (default 0.005, vLLM's measured gap)
  FAKE_VLLM_ENGINE_S   seconds bound but not listening (the engine build; default 0.5)
  FAKE_VLLM_BIND_FIRST 1: bind before the banner (loses the hand-over race while the launcher holds the port)
  FAKE_VLLM_FAIL       a message: print it as vLLM's error line after the banner and exit 1
  FAKE_VLLM_LOG        a file: append "bind-ok" / "bind-failed ERRNO" (what the test checks)
  FAKE_VLLM_KV_TOKENS  tokens for the "CPU KV cache size" line (default 2,097,152)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def _arg(argv: list[str], name: str, default: str) -> str:
    for i, token in enumerate(argv):
        if token == name and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
    return default


def _note(text: str) -> None:
    path = os.environ.get("FAKE_VLLM_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(text + "\n")


def _bind(host: str, port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("" if host == "0.0.0.0" else host, port))
    except OSError as error:
        _note(f"bind-failed {error.errno}")
        print(f"OSError: [Errno {error.errno}] {error.strerror}", flush=True)
        return None
    _note("bind-ok")
    return sock


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host = _arg(argv, "--host", "0.0.0.0")
    port = int(_arg(argv, "--port", "8000"))
    names = _arg(argv, "--served-model-name", "fake")
    headless = "--headless" in argv
    time.sleep(float(os.environ.get("FAKE_VLLM_IMPORT_S", "0.3")))
    bind_first = os.environ.get("FAKE_VLLM_BIND_FIRST") == "1" and not headless
    sock = _bind(host, port) if bind_first else None
    print(f"(APIServer pid={os.getpid()}) INFO [api_utils.py:347] version 0.32.0 (fake)", flush=True)
    failure = os.environ.get("FAKE_VLLM_FAIL")
    if failure:
        print(f"(APIServer pid={os.getpid()}) ERROR {failure}", flush=True)
        return 1
    if headless:
        time.sleep(3600)
        return 0
    if not bind_first:
        time.sleep(float(os.environ.get("FAKE_VLLM_BIND_S", "0.005")))
        sock = _bind(host, port)
    if sock is None:
        return 1
    tokens = os.environ.get("FAKE_VLLM_KV_TOKENS", "2,097,152")
    print(f"(EngineCore pid={os.getpid()}) INFO Checkpoint size: 0.00 GiB.", flush=True)
    print(f"(EngineCore pid={os.getpid()}) INFO Explicitly set (1.0/23.54) GiB for KV cache on node 0.", flush=True)
    print(f"(EngineCore pid={os.getpid()}) INFO CPU KV cache size: {tokens} tokens, "
          "Maximum concurrency for 512 tokens per request: 4096.00x", flush=True)
    time.sleep(float(os.environ.get("FAKE_VLLM_ENGINE_S", "0.5")))
    served = names

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._send(200, b"")
            elif self.path == "/v1/models":
                self._send(200, json.dumps({"data": [{"id": served}]}).encode())
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            self.rfile.read(length)
            self._send(200, json.dumps({"choices": [{"text": "!"}]}).encode())

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Server", "fake-vllm")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return

    server = HTTPServer((host, port), Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    sock.listen(64)
    print(f"(APIServer pid={os.getpid()}) INFO Starting vLLM server on http://{host}:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

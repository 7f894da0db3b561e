"""A stand-in for `vllm serve`: no model, but vLLM's shape on its port and in its output, for the
supervisor's tests (tests/launch/test_supervisor.py runs it directly) and the launcher's own
HTTP and port hand-over (tests/observe, through tests/support/fake_vllm_run.py).

Like vLLM 0.32 it prints its first lines, binds the API port (SO_REUSEADDR) right after them,
builds its "engine" (sleeps) while bound but not listening, then listens and answers GET /health
(200), GET /v1/models and POST /v1/completions (and /v1/chat/completions). With --api-key every
/v1/* request needs "Authorization: Bearer KEY" (/health stays open, as in vLLM). SIGTERM prints
"fake-vllm: shutting down" and exits 0 (vLLM's graceful stop). ``--headless`` (a multi-node
worker) binds nothing and sleeps.

vLLM's own flags it reads: --host, --port, --served-model-name (one or more), --api-key,
--headless; every other argument is accepted and ignored. Misbehaviour, by flag:
  --ready-delay S        seconds bound but not listening (the engine build; FAKE_VLLM_ENGINE_S)
  --exit-code N          print a line and exit N at once
  --fail-with TEXT       print TEXT lines (\\n separated) to stderr, then exit 1
  --ignore-sigterm       ignore SIGTERM (the supervisor must SIGKILL after its grace period)
  --die-on-sigterm       keep the default SIGTERM action (killed by the signal: 128+15)
  --ignore-sigint        ignore SIGINT too
  --spawn-grandchild F   start a grandchild that ignores SIGTERM and sleeps, write its pid to F
  --completions-fail     completions answer 500 (healthy but broken, like CPU head_dim 16)
and by environment (what a launcher passes on to its vLLM):
  FAKE_VLLM_IMPORT_S     seconds before the first line (vLLM's imports; default 0)
  FAKE_VLLM_BIND_S       seconds between the first lines and the bind (default 0)
  FAKE_VLLM_ENGINE_S     seconds bound but not listening (default 0)
  FAKE_VLLM_BIND_FIRST   1: bind before the first line (loses the hand-over race while the launcher holds the port)
  FAKE_VLLM_FAIL         a message: print it as vLLM's error line after the banner and exit 1
  FAKE_VLLM_LOG          a file: append "bind-ok" / "bind-failed ERRNO" (what the test checks)
  FAKE_VLLM_KV_TOKENS    tokens for the "CPU KV cache size" line (default 2,097,152)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", nargs="+", default=["tiny"])
    parser.add_argument("--api-key")
    parser.add_argument("--headless", action="store_true")
    parser.add_argument("--ready-delay", type=float)
    parser.add_argument("--exit-code", type=int)
    parser.add_argument("--fail-with")
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--die-on-sigterm", action="store_true")
    parser.add_argument("--ignore-sigint", action="store_true")
    parser.add_argument("--spawn-grandchild")
    parser.add_argument("--completions-fail", action="store_true")
    options, _ = parser.parse_known_args(argv)
    return options


def _seconds(name: str) -> float:
    return float(os.environ.get(name, "0"))


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


def _on_signals(options: argparse.Namespace) -> None:
    if options.ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif not options.die_on_sigterm:

        def graceful(signum: int, _frame: object) -> None:
            print("fake-vllm: shutting down", flush=True)
            os._exit(0)

        signal.signal(signal.SIGTERM, graceful)
        if not options.ignore_sigint:
            signal.signal(signal.SIGINT, graceful)


def _spawn_grandchild(pid_file: str) -> None:
    grandchild = subprocess.Popen(
        [sys.executable, "-c", "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(120)\n"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    with open(pid_file, "w") as out:
        out.write(str(grandchild.pid))


def _handler(options: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    names = options.served_model_name

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refused(self) -> bool:
            """vLLM's API-key middleware: every /v1/* request needs the bearer token."""
            if options.api_key is None or not self.path.startswith("/v1/"):
                return False
            if self.headers.get("Authorization") == f"Bearer {options.api_key}":
                return False
            self._send(401, {"error": "Unauthorized"})
            return True

        def do_GET(self) -> None:  # noqa: N802
            if self._refused():
                return
            if self.path == "/health":
                self._send(200)
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": n, "object": "model"} for n in names]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            request = json.loads(self.rfile.read(length) or b"{}")
            if self._refused():
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": "not found"})
            elif options.completions_fail:
                self._send(500, {"error": "EngineDeadError"})
            elif request.get("model") not in names:
                self._send(404, {"error": f"model {request.get('model')} not found"})
            else:
                self._send(200, {"object": "text_completion", "choices": [{"index": 0, "text": "x"}]})

        def log_message(self, fmt: str, *fmt_args: object) -> None:
            print("fake-vllm: " + fmt % fmt_args, flush=True)

    return Handler


def main(argv: list[str]) -> int:
    options = _options(argv)
    _on_signals(options)
    time.sleep(_seconds("FAKE_VLLM_IMPORT_S"))
    bind_first = os.environ.get("FAKE_VLLM_BIND_FIRST") == "1" and not options.headless
    sock = _bind(options.host, options.port) if bind_first else None
    print(f"fake-vllm: starting pid {os.getpid()}", flush=True)
    print(f"(APIServer pid={os.getpid()}) INFO [api_utils.py:347] version 0.32.0 (fake)", flush=True)
    if options.exit_code is not None:
        print(f"fake-vllm: exiting with {options.exit_code}", flush=True)
        return options.exit_code
    if options.fail_with is not None:
        for line in options.fail_with.split("\\n"):
            print(line, file=sys.stderr, flush=True)
        return 1
    failure = os.environ.get("FAKE_VLLM_FAIL")
    if failure:
        print(f"(APIServer pid={os.getpid()}) ERROR {failure}", flush=True)
        return 1
    if options.spawn_grandchild:
        _spawn_grandchild(options.spawn_grandchild)
    if options.headless:
        time.sleep(3600)
        return 0
    if not bind_first:
        time.sleep(_seconds("FAKE_VLLM_BIND_S"))
        sock = _bind(options.host, options.port)
    if sock is None:
        return 1  # vLLM's "Address already in use"
    tokens = os.environ.get("FAKE_VLLM_KV_TOKENS", "2,097,152")
    print(f"(EngineCore pid={os.getpid()}) INFO Checkpoint size: 0.00 GiB.", flush=True)
    print(f"(EngineCore pid={os.getpid()}) INFO Explicitly set (1.0/23.54) GiB for KV cache on node 0.", flush=True)
    print(f"(EngineCore pid={os.getpid()}) INFO CPU KV cache size: {tokens} tokens, "
          "Maximum concurrency for 512 tokens per request: 4096.00x", flush=True)
    engine_s = options.ready_delay if options.ready_delay is not None else _seconds("FAKE_VLLM_ENGINE_S")
    time.sleep(engine_s)

    server = ThreadingHTTPServer((options.host, options.port), _handler(options), bind_and_activate=False)
    server.daemon_threads = True
    server.socket.close()
    server.socket = sock
    sock.listen(64)
    print(f"(APIServer pid={os.getpid()}) INFO Starting vLLM server on http://{options.host}:{options.port}", flush=True)
    print("fake-vllm: Application startup complete.", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

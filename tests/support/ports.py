"""Free loopback ports for the tests that start servers."""

from __future__ import annotations

import socket


def free_port(span: int = 1) -> int:
    """A port p with p .. p+span-1 free (say vLLM's master port and the group store's port after it)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span > 65535:
            continue
        try:
            for extra in range(1, span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port range")

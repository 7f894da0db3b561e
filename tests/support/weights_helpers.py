"""Helpers shared by the weights-step tests (test_weights, test_downloader, test_hub, ...)."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kaito_runtime.hub import RemoteFile
from kaito_runtime.values import AttentionGeometry, ModelSpec


def spec(repo_id: str | None = "org/tiny", *, revision: str | None = None, load_format: str = "hf", local_path: str | None = None) -> ModelSpec:
    return ModelSpec(
        name="test-model",
        architecture="LlamaForCausalLM",
        weights_bytes=1,
        max_context=256,
        attention=AttentionGeometry(num_layers=2, num_attention_heads=2, num_kv_heads=2, head_dim=8),
        repo_id=repo_id,
        revision=revision,
        load_format=load_format,  # type: ignore[arg-type]
        local_path=local_path,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def remote_file(hub: object, repo_id: str, path: str) -> RemoteFile:
    e = hub.file_entry(repo_id, path)  # type: ignore[attr-defined]
    return RemoteFile(e.path, e.size, e.blob_sha1, e.sha256)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint that accepts connections and never answers (yields its URL)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            held.append(conn)  # read nothing, answer nothing

    thread = threading.Thread(target=accept, name="silent-endpoint", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()

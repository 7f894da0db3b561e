"""Models streamed from object stores through real vLLM on the CPU (issue 23).

User stories:
- A platform engineer points `--model` at s3://bucket/prefix (moto on loopback) or gs://bucket/
  prefix (gcp-storage-emulator): the launcher plans from the store, vLLM streams the tensors with
  the Run:ai streamer, a completion comes back, and no credential shows anywhere; no tensor file
  is written to the node's disk.
- Two loopback nodes serve one model from S3 (TP 2 across them): each node's weights step put the
  non-tensor files in its own assets folder before its vLLM started.

Azure: the streamer's C++ client builds https://ACCOUNT.SUFFIX and trusts only the system CA
bundle, so it cannot reach Azurite (plain HTTP, or a self-signed certificate) on loopback; the
Azure path is tested up to vLLM's exact argv and environment in tests/objstore/test_objstore.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaito_runtime.launch.vllm_install import detect_vllm
from tests.support import object_stores as st
from tests.support.ci import need_vllm
from tests.support.hardening import leaked
from tests.support.launcher_log import READY_LINE

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "models" / "tiny-llama"
KAITO_RUN = Path(sys.executable).parent / "kaito-run"
READY_TIMEOUT = 420

need_vllm(detect_vllm() is not None and KAITO_RUN.exists())


def base_env(tmp: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE", "VLLM_", "AWS_", "AZURE_", "STORAGE_EMULATOR"))}
    env.update(HF_HOME=str(tmp / "hf-home"), HOME=str(tmp / "home"), PYTHONUNBUFFERED="1", **extra)
    return env


def completion(port: int) -> dict:
    import json
    import urllib.request

    body = json.dumps({"model": "tiny-llama", "prompt": "hello", "max_tokens": 4}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def wait_ready(proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if READY_LINE in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"kaito-run exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(1)
    pytest.fail(f"not ready after {READY_TIMEOUT} s:\n{log.read_text(errors='replace')[-4000:]}")


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()
    return proc.returncode


@pytest.fixture(params=["s3", "gs"])
def store(request, tmp_path):
    """(model URI, environment with its endpoint and credentials, the server, secrets to look for)."""
    if request.param == "s3":
        server = st.start_moto(tmp_path)
        st.upload_s3(server, "models", "tiny-llama", TINY)
        env, secrets = st.s3_env(server), [st.S3_SECRET, st.S3_KEY_ID]
    else:
        server = st.start_gcs(tmp_path)
        st.upload_gcs(server, "models", "tiny-llama", TINY)
        env, secrets = {"STORAGE_EMULATOR_HOST": server.url}, []
    yield f"{request.param}://models/tiny-llama", env, server, secrets
    server.stop()


def test_vllm_serves_a_model_streamed_from_the_store(store, tmp_path):
    uri, env, server, secrets = store
    port = st.free_port()
    weights = tmp_path / "w"
    log = tmp_path / "kaito-run.log"
    mark = server.mark()
    with log.open("w") as out:
        proc = subprocess.Popen([str(KAITO_RUN), "--model", uri, "--weights-dir", str(weights), "--host", "127.0.0.1",
                                 "--port", str(port)], env=base_env(tmp_path, env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, log)
        answer = completion(port)
        assert answer["choices"][0]["text"], answer
    finally:
        code = stop(proc)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    start = next(line for line in text.splitlines() if "starting vLLM:" in line)
    assert f"serve {uri} " in start and "--load-format runai_streamer" in start, start
    assert "Runai Model Streamer" in text  # vLLM loaded through the streamer
    for secret in secrets:
        assert not leaked(secret, text), secret
    # the non-tensor files came from the weights step; no tensor bytes were written to disk
    assets = list(weights.rglob("config.json"))
    assert assets and "model_streamer" in str(assets[0]), assets
    assert not list(weights.rglob("*.safetensors"))
    shard_reads = [r for r in st.werkzeug_requests(server.lines_since(mark)) if "model.safetensors" in r[1]]
    assert shard_reads, "the streamer read nothing from the store"


def test_two_loopback_nodes_serve_one_model_from_s3(tmp_path):
    from tests.e2e.test_multi_node import Node, chat, free_port, wait_ready as group_ready

    server = st.start_moto(tmp_path)
    st.upload_s3(server, "models", "tiny-llama", TINY)
    master_port = free_port(span=2)
    nodes = []
    try:
        for rank in (0, 1):
            port = free_port()
            nodes.append(Node(tmp_path, rank, master_port, env=base_env(tmp_path, st.s3_env(server)), port=port, argv=[
                str(KAITO_RUN), "--model", "s3://models/tiny-llama", "--nnodes", "2", "--node-rank", str(rank),
                "--leader-address", "127.0.0.1", "--master-port", str(master_port), "--host", "127.0.0.1",
                "--port", str(port), "--cpu-cores", str(rank), "--weights-dir", str(tmp_path / f"w{rank}"),
            ]))
        group_ready(*nodes)
        assert chat(nodes[0])["choices"][0]["message"]["content"] is not None
        for rank, node in enumerate(nodes):
            text = node.text()
            assert "streams from the store" in text and "serve s3://models/tiny-llama" in text, text[-2000:]
            assets = list((tmp_path / f"w{rank}").rglob("tokenizer.json"))
            assert assets and "model_streamer" in str(assets[0]), (rank, assets)
            assert not leaked(st.S3_SECRET, text)
    finally:
        for node in reversed(nodes):
            node.stop()
        server.stop()

"""Models streamed from object stores through real vLLM on the CPU (issue 23).

User stories:
- A platform engineer points `--model` at s3://bucket/prefix (moto on loopback) or gs://bucket/
  prefix (gcp-storage-emulator): the launcher plans from the store, vLLM streams the tensors with
  the Run:ai streamer, a completion comes back, and no credential shows anywhere; no tensor file
  is written to the node's disk.
- The same from an Azure container (Azurite), the way KAITO's model mirror runs it: the SAS token
  from STREAM_ENV_FILE through KAITO's export script, the account in AZURE_STORAGE_ACCOUNT_NAME.
- Two loopback nodes serve one model from S3 (TP 2 across them): each node's weights step put the
  non-tensor files in its own assets folder before its vLLM started.

Azure: the streamer's C++ client always speaks https to ACCOUNT.SUFFIX
(AZURE_STORAGE_ENDPOINT_SUFFIX) and trusts only the system CA bundle. So Azurite serves https
with a certificate for devstoreaccount1.localhost signed by a CA the test makes, and the launcher
(with its vLLM) runs in a private mount namespace where that CA is added to the trust files and
the name to /etc/hosts (tests/support/private_trust.py); launcher, vLLM and streamer are the real
ones, the machine's own trust store is never changed.
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
from tests.support.private_trust import check_the_namespace_is_private, make_test_ca, trusting_prefix

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


def serve_and_ask(argv: list[str], uri: str, env: dict[str, str], tmp: Path) -> tuple[int, str]:
    """Run ``argv`` (ending in kaito-run) for ``uri`` until ready, ask for one completion, stop it
    with SIGTERM; the exit code and the whole log."""
    port = st.free_port()
    log = tmp / "kaito-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*argv, "--model", uri, "--weights-dir", str(tmp / "w"), "--host", "127.0.0.1",
                                 "--port", str(port)], env=base_env(tmp, env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(proc, log)
        answer = completion(port)
        assert answer["choices"][0]["text"], answer
    finally:
        code = stop(proc)
    return code, log.read_text(errors="replace")


def check_streamed(uri: str, code: int, text: str, weights: Path, secrets: list[str]) -> None:
    """vLLM streamed ``uri`` with the Run:ai streamer, exited cleanly, leaked no secret, and no
    tensor bytes reached the node's disk (the non-tensor files came from the weights step)."""
    assert code == 0, text[-3000:]
    start = next(line for line in text.splitlines() if "starting vLLM:" in line)
    assert f"serve {uri} " in start and "--load-format runai_streamer" in start, start
    assert "Runai Model Streamer" in text  # vLLM loaded through the streamer
    for secret in secrets:
        assert not leaked(secret, text), secret
    assets = list(weights.rglob("config.json"))
    assert assets and "model_streamer" in str(assets[0]), assets
    assert not list(weights.rglob("*.safetensors"))


def test_vllm_serves_a_model_streamed_from_the_store(store, tmp_path):
    uri, env, server, secrets = store
    mark = server.mark()
    code, text = serve_and_ask([str(KAITO_RUN)], uri, env, tmp_path)
    check_streamed(uri, code, text, tmp_path / "w", secrets)
    shard_reads = [r for r in st.werkzeug_requests(server.lines_since(mark)) if "model.safetensors" in r[1]]
    assert shard_reads, "the streamer read nothing from the store"


def test_vllm_serves_a_model_streamed_from_azure_through_kaitos_sas_script(tmp_path):
    ca = make_test_ca(tmp_path / "tls", (f"{st.AZURITE_ACCOUNT}.localhost",))
    private = trusting_prefix(ca, tmp_path / "trust")
    check_the_namespace_is_private(ca, tmp_path / "trust")
    server = st.start_azurite(tmp_path, tls=ca)
    try:
        st.upload_azure(server, "models", "tiny-llama", TINY, tls=ca)
        sas = st.azure_sas(server, "models")
        env_file = tmp_path / "streaming-env"  # what KAITO's SAS-fetch init container writes
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"AZURE_STORAGE_SAS_TOKEN='{sas}'\n")
        env = {"AZURE_STORAGE_ACCOUNT_NAME": st.AZURITE_ACCOUNT, "STREAM_ENV_FILE": str(env_file),
               # the streamer's https://ACCOUNT.SUFFIX: Azurite's production-style host on loopback
               "AZURE_STORAGE_ENDPOINT_SUFFIX": f"localhost:{server.port}"}
        script = REPO / "entrypoints" / "kaito" / "export_sas_token_for_streaming.sh"
        code, text = serve_and_ask([*private, "/bin/sh", str(script), str(KAITO_RUN)], "az://models/tiny-llama",
                                   env, tmp_path)
    finally:
        server.stop()
    assert "AZURE_STORAGE_SAS_TOKEN set from" in text and "value not shown" in text
    check_streamed("az://models/tiny-llama", code, text, tmp_path / "w", [sas, sas.partition("sig=")[2]])
    # the tensors came through the streamer's C++ client (azure-sdk-for-cpp), over https
    shard = [r for r in st.azurite_requests(server) if r.method == "GET" and "/model.safetensors" in r.url]
    assert [r for r in shard if "azsdk-cpp-storage-blobs" in r.agent and r.url.startswith("https://")], shard


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

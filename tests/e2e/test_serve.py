"""End to end through real vLLM on the CPU: `kaito-run` from nothing to a ready endpoint and back.

User stories:
- A platform engineer names a gated Hugging Face model by its id (`--preset org/name`) with a token: it downloads the
  weights, starts vLLM, answers chat and completion requests, and the token is seen nowhere.
- Arguments after `--` reach vLLM and win over the plan.
- Kubernetes stops the pod with SIGTERM: everything stops within the grace period, exit 0, no process left.
- A context length that cannot fit ends in one line that names the cause and the fix.

Two vLLM servers in all (one that serves, one that fails); they share the project's venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from kaito_runtime.launch.vllm_install import detect_vllm
from tests.support.ci import need_vllm
from tests.support.launcher_log import READY_LINE
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "models" / "tiny-llama"
REPO_ID = "kaito-test/tiny-llama"
TOKEN = "hf_e2eGatedToken_7f3a9c1d5e"
KAITO_RUN = Path(sys.executable).parent / "kaito-run"
READY_TIMEOUT = 300
GRACE_SECONDS = 20

need_vllm(detect_vllm() is not None and KAITO_RUN.exists())


def get_json(url: str, payload: dict | None = None, timeout: float = 120) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200
        return json.loads(response.read())


def base_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE"))}
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
               PYTHONUNBUFFERED="1")
    return env


def wait_for_line(proc: subprocess.Popen, log: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"kaito-run exited with {proc.returncode} before '{needle}':\n{log.read_text()[-4000:]}")
        time.sleep(0.5)
    pytest.fail(f"no '{needle}' after {timeout} s:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def gated_hub(tmp_path_factory):
    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("e2e-hub")
    shutil.copytree(TINY_MODEL, root / REPO_ID)
    emulator = HubEmulator(root, lfs_threshold=100_000)
    emulator.gate(REPO_ID, {TOKEN})
    with emulator:
        yield emulator


@pytest.fixture(scope="module")
def server(gated_hub, tmp_path_factory):
    """kaito-run serving the gated tiny model downloaded from the emulator, with a pass-through flag."""
    tmp = tmp_path_factory.mktemp("e2e-serve")
    port = free_port()
    env = base_env(tmp)
    env.update(HF_ENDPOINT=gated_hub.url, HF_TOKEN=TOKEN)
    out, err = tmp / "stdout.log", tmp / "stderr.log"
    # Addressed only by its hub id, as KAITO users name a model (`inference.preset.name: org/name`).
    argv = [str(KAITO_RUN), "--preset", REPO_ID, "--host", "127.0.0.1", "--port", str(port),
            "--weights-dir", str(tmp / "weights"), "--grace-period", str(GRACE_SECONDS),
            "--plan-report", str(tmp / "plan-report.jsonl"),
            "--", "--max-model-len", "384"]
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr, cwd=tmp)
    try:
        wait_for_line(proc, err, READY_LINE, READY_TIMEOUT)
        yield {"proc": proc, "port": port, "out": out, "err": err, "argv": argv, "hub": gated_hub}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(GRACE_SECONDS + 10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_gated_model_is_downloaded_with_the_token_and_reported_ready(server):
    log = server["err"].read_text()
    ready = next(line for line in log.splitlines() if READY_LINE in line)
    for phase in ("inventory", "plan", "weights", "vLLM start"):
        assert phase in ready
    assert server["hub"].body_gets() >= 1, "the weights should have come from the hub emulator"
    assert server["hub"].count(path_contains="model.safetensors", method="GET") >= 1


def test_launch_checks_the_plan_against_vllms_own_memory_lines(server):
    log = server["err"].read_text()
    line = next(line for line in log.splitlines() if "plan check:" in line)
    match = re.search(r"KV predicted ([\d,]+) tokens, vLLM has ([\d,]+) \(([+-][\d.]+) %\); weights predicted", line)
    assert match, line
    assert abs(float(match.group(3))) <= 5.0  # the CPU KV space is set exactly: the count must agree
    assert "checkpoint" in line
    report = Path(server["argv"][server["argv"].index("--plan-report") + 1])
    record = json.loads(report.read_text().splitlines()[0])
    assert record["vllm_kv_tokens"] == int(match.group(2).replace(",", "")) and record["target"] == "cpu"


def test_models_endpoint_lists_served_name_and_passthrough_wins(server):
    models = get_json(f"http://127.0.0.1:{server['port']}/v1/models")
    entry = models["data"][0]
    assert entry["id"] == "tiny-llama"
    # the plan said 512 (the model's limit); the `-- --max-model-len 384` pass-through won.
    assert entry["max_model_len"] == 384


def test_chat_completion_answers(server):
    reply = get_json(
        f"http://127.0.0.1:{server['port']}/v1/chat/completions",
        {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello there"}],
         "max_tokens": 8, "temperature": 0},
    )
    assert reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] > 0


def test_completion_answers_deterministically(server):
    url = f"http://127.0.0.1:{server['port']}/v1/completions"
    payload = {"model": "tiny-llama", "prompt": "def main():", "max_tokens": 8, "temperature": 0}
    first, second = get_json(url, payload), get_json(url, payload)
    assert first["choices"][0]["text"]
    assert first["choices"][0]["text"] == second["choices"][0]["text"]


def test_token_appears_in_no_log_argv_or_vllm_environment(server):
    proc = psutil.Process(server["proc"].pid)
    tree = [proc, *proc.children(recursive=True)]
    assert len(tree) >= 2, "vLLM should run as a child of kaito-run"
    for p in tree:
        assert all(TOKEN not in part for part in p.cmdline()), f"token in argv of {p.pid}"
    for child in tree[1:]:
        environ = Path(f"/proc/{child.pid}/environ").read_bytes()
        assert TOKEN.encode() not in environ, f"vLLM process {child.pid} received the token"
    assert TOKEN not in server["out"].read_text(errors="replace")
    assert TOKEN not in server["err"].read_text(errors="replace")


def test_sigterm_stops_everything_within_grace_with_exit_0(server):
    proc = server["proc"]
    pids = [p.pid for p in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(GRACE_SECONDS + 10)
    assert code == 0, server["err"].read_text()[-3000:]
    assert time.monotonic() - started < GRACE_SECONDS
    time.sleep(0.5)
    alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {alive}"
    assert TOKEN not in server["err"].read_text(errors="replace")


def test_context_that_cannot_fit_is_refused_before_anything_starts(tmp_path):
    result = subprocess.run(
        [str(KAITO_RUN), "--model", str(TINY_MODEL), "--max-model-len", "4096", "--port", str(free_port())],
        env=base_env(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "4096" in result.stderr and "512" in result.stderr
    assert "starting vLLM" not in result.stderr


def test_kv_cache_too_small_for_context_is_explained(tmp_path):
    """vLLM itself refuses: a KV cache of 200 kB holds 256 tokens, not the 512 asked for."""
    result = subprocess.run(
        [str(KAITO_RUN), "--model", str(TINY_MODEL), "--host", "127.0.0.1", "--port", str(free_port()),
         "--", "--kv-cache-memory-bytes", "200k"],
        env=base_env(tmp_path), capture_output=True, text=True, timeout=READY_TIMEOUT,
    )
    assert result.returncode not in (0, 2), result.stderr[-3000:]
    final = result.stderr.strip().splitlines()[-1]
    assert "KV cache is too small for max-model-len 512" in final
    assert "--max-model-len <= 256" in final

"""The image built and run for real: the CPU variant of Dockerfile.cuda (scripts/build-image.sh cpu,
cached by a hash of its inputs), run with podman, serving the tiny model through real vLLM.

User stories, three groups of containers, one group at a time:
- KAITO's single-node pod (command ["/bin/sh", "-c", <KAITO's command line, unchanged>]) downloads
  a gated model with a token from a mounted secret file and serves it: a chat completion,
  /health, KAITO's benchmark startup probe (podman exec, as kubelet runs it), the image's
  HEALTHCHECK; everything runs as uid 1000, the weights and cache volumes
  are written by it and nothing else is; the token is nowhere (logs, inspect, history, the image
  and container file systems, the volumes).
- The image's own entrypoint (tini -> kaito-entrypoint -> kaito-run): `podman stop` ends it with
  exit 0 while a request is in flight, and that request completes.
- KAITO's two-node StatefulSet script in two containers on the host network (the leader's DNS
  name mapped to loopback): a chat through the leader; `podman kill` of the worker ends the
  leader's container with exit 22 within the peer timeout when the group has no restart budget
  (KAITO_MAX_RESTARTS=0; docs/multi-node.md).

Tools missing (podman, buildah, runc, root): skip with one line; under CI=true: fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support.containers import Container, build, chat, http, inspect_image, podman
from tests.support.hardening import leaked
from tests.support.ports import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent.parent
TINY_MODEL = REPO / "models" / "tiny-llama"
REPO_ID = "kaito-test/tiny-llama"
TOKEN = "hf_Qm2Xw9Lp4Rt8Zk3Vb6NjYc7Hd5GfUa"  # granted access to the gated tiny repo
READY_S = 600
GRACE_S = 30
PEER_TIMEOUT_S = 10
LEADER_DNS = "ws-0.ws-headless.default.svc.cluster.local"
UID = 1000
# Files podman itself bind-mounts into every container.
PODMAN_FILES = {"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run/.containerenv"}


@pytest.fixture(scope="module")
def image():
    return build("cpu")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import shutil

    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("container-hub")
    shutil.copytree(TINY_MODEL, root / REPO_ID)
    with HubEmulator(root, lfs_threshold=100_000) as emulator:
        emulator.gate(REPO_ID, [TOKEN])
        yield emulator


@pytest.fixture(scope="module")
def token_file(tmp_path_factory) -> Path:
    """The token as Kubernetes mounts a Secret: a file readable by the pod's user."""
    path = tmp_path_factory.mktemp("secret") / "hf-token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o644)
    path.parent.chmod(0o755)
    return path


def kaito_single_node(hub) -> str:
    """KAITO's single-node command line (KAITO main, vLLM runtime), unchanged."""
    return (
        f"python3 /workspace/vllm/inference_api.py --model={REPO_ID} --code-revision={hub.commit_of(REPO_ID)} "
        "--download-dir=/workspace/weights --tensor-parallel-size=1 --gpu-memory-utilization=0.84 "
        "--max-model-len=auto --served-model-name=tiny-llama"
    )


def volume_dir(name: str) -> Path:
    return Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())


def processes(container: Container) -> list[tuple[int, int, str]]:
    """(pid, uid, command line) of every process in the container but the one that lists them."""
    script = (
        "import os, json\n"
        "me = os.getpid()\n"
        "out = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        uid = int(next(l for l in open(f'/proc/{pid}/status') if l.startswith('Uid:')).split()[1])\n"
        "        cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\\0', b' ').decode()\n"
        "    except OSError:\n"
        "        continue\n"
        "    if int(pid) != me:\n"
        "        out.append((int(pid), uid, cmd))\n"
        "print(json.dumps(out))\n"
    )
    done = container.exec("python3", "-c", script)
    assert done.returncode == 0, done.stderr
    return [tuple(row) for row in json.loads(done.stdout)]


# =================================================================================================
# KAITO's single-node pod
# =================================================================================================


class Pod:
    def __init__(self, image, hub, token_file: Path) -> None:
        self.port = free_port()
        self.name = f"kaito-test-single-{os.getpid()}"
        self.weights, self.cache = f"{self.name}-weights", f"{self.name}-cache"
        self.container = Container(self.name, image.tag, ["-c", kaito_single_node(hub)], port=self.port, options=[
            "--entrypoint", "/bin/sh",
            "-v", f"{self.weights}:/workspace/weights", "-v", f"{self.cache}:/workspace/cache",
            "-v", f"{token_file}:/run/secrets/hf-token:ro", "-e", "KAITO_HF_TOKEN_FILE=/run/secrets/hf-token",
            # On the host network beside other servers: the hub emulator's address and a free port.
            "-e", f"HF_ENDPOINT={hub.url}", "-e", "HF_HUB_DISABLE_XET=1", "-e", f"KAITO_PORT={self.port}",
            # The healthcheck is run by the test (`podman healthcheck run`), not by a systemd timer.
            "--health-interval", "disable",
        ])
        self.health_while_loading = podman("healthcheck", "run", self.name, check=False)
        self.probe_while_loading = self.probe()
        self.ready_s = self.container.wait_ready(READY_S)

    def probe(self) -> subprocess.CompletedProcess:
        """KAITO's startup probe as kubelet runs it (an exec in the container), shortened."""
        short = {"KAITO_BENCHMARK_URL": f"http://localhost:{self.port}", "KAITO_BENCHMARK_DURATION": "5",
                 "KAITO_BENCHMARK_INPUT_TOKENS": "32", "KAITO_BENCHMARK_OUTPUT_TOKENS": "8",
                 "KAITO_BENCHMARK_DRAIN_TIMEOUT": "60"}
        options = [item for key, value in short.items() for item in ("--env", f"{key}={value}")]
        return self.container.exec("python3", "/workspace/vllm/benchmark_entrypoint.py", options=options, timeout=600)


@pytest.fixture(scope="class")
def pod(image, hub, token_file):
    pod = Pod(image, hub, token_file)
    try:
        yield pod
    finally:
        pod.container.close()


@pytest.mark.usefixtures("pod")
class TestKaitoSingleNodePod:
    def test_kaitos_command_serves_the_gated_model_downloaded_with_the_token_file(self, pod, hub):
        answer = chat(pod.port)
        assert answer["choices"][0]["message"]["content"]
        assert http(f"http://127.0.0.1:{pod.port}/health")[0] == 200
        status, models = http(f"http://127.0.0.1:{pod.port}/v1/models")
        assert status == 200 and json.loads(models)["data"][0]["id"] == "tiny-llama"
        downloads = [r for r in hub.records if r.kind == "resolve" and r.status in (200, 206, 302)]
        assert downloads and all(r.authorized for r in downloads)  # the gated repo: only with the token

    def test_kaitos_benchmark_startup_probe_fails_while_loading_then_passes_and_its_lines_reach_podman_logs(self, pod):
        early = pod.probe_while_loading
        assert early.returncode == 1, early.stdout + early.stderr
        assert "KAITO_BENCHMARK_RESULT" not in pod.container.logs()  # /health was not 200: no result yet
        done = pod.probe()
        assert done.returncode == 0, done.stdout + done.stderr
        logs = pod.container.logs()  # PID 1's stdout: what `kubectl logs` shows and KAITO parses
        config = [line for line in logs.splitlines() if line.startswith("KAITO_BENCHMARK_CONFIG ")]
        result = [line for line in logs.splitlines() if line.startswith("KAITO_BENCHMARK_RESULT ")]
        assert len(config) == 1 and len(result) == 1, logs[-3000:]
        assert json.loads(config[0].split(" ", 2)[2])["duration_sec"] == 5
        figures = json.loads(result[0].split(" ", 2)[2])
        assert figures["vllm_total_tpm"] > 0 and figures["ttft_avg_ms"] > 0, figures

    def test_the_images_healthcheck_fails_while_loading_and_passes_when_ready(self, pod):
        assert pod.health_while_loading.returncode != 0, pod.health_while_loading.stdout
        done = podman("healthcheck", "run", pod.name, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        health = inspect_image(json.loads(podman("inspect", pod.name).stdout)[0]["Image"])["Healthcheck"]
        assert "multi-node-health-check.py" in " ".join(health["Test"])

    def test_everything_runs_as_uid_1000(self, pod):
        running = processes(pod.container)
        commands = " | ".join(cmd for _, _, cmd in running)
        assert "kaito_runtime" in commands or "kaito-run" in commands, commands
        assert "vllm" in commands.lower(), commands
        assert {uid for _, uid, _ in running} == {UID}, running

    def test_the_weights_and_cache_volumes_are_written_by_uid_1000_and_nothing_else_is(self, pod):
        weights, cache = volume_dir(pod.weights), volume_dir(pod.cache)
        written = [p for p in weights.rglob("*") if p.is_file()]
        assert any(p.name == "model.safetensors" for p in written), written
        assert {p.stat().st_uid for p in written} == {UID}
        assert any(p.is_file() for p in cache.rglob("*")), "nothing in the cache volume"
        assert {p.stat().st_uid for p in cache.rglob("*")} <= {UID}
        # The container's own layer: what was written outside its volumes. podman's own mount
        # points (the secret file, /etc/hosts, ...) and the folders holding them are not writes.
        changed = podman("diff", "--format", "json", pod.name).stdout
        diff = json.loads(changed) if changed.strip() else {}
        info = json.loads(podman("inspect", pod.name).stdout)[0]
        mounts = {m["Destination"] for m in info["Mounts"]} | PODMAN_FILES
        parents = {str(parent) for m in mounts for parent in Path(m).parents}
        assert not diff.get("deleted"), diff
        assert set(diff.get("added") or []) <= mounts | parents, diff
        assert set(diff.get("changed") or []) <= mounts | parents, diff
        assert "/tmp" in mounts  # a scratch volume (vLLM's IPC sockets): nothing of it stays in the layer

    def test_the_token_is_nowhere_but_its_secret_file(self, pod, image):
        texts = {
            "podman logs": pod.container.logs(),
            "podman inspect (container)": podman("inspect", pod.name).stdout,
            "podman inspect (image)": podman("image", "inspect", image.tag).stdout,
            "podman history": podman("history", "--no-trunc", image.tag).stdout,
        }
        for where, text in texts.items():
            assert not leaked(TOKEN, text), where
        assert f"KAITO_HF_TOKEN_FILE=/run/secrets/hf-token" in texts["podman inspect (container)"]
        # Every file of the image's layers and the container's layer (the merged root file system,
        # mounts excluded), and both volumes.
        root = Path(podman("mount", pod.name).stdout.strip())
        try:
            roots = [root, volume_dir(pod.weights), volume_dir(pod.cache)]
            found = _grep(TOKEN[4:20].encode(), roots)
        finally:
            podman("unmount", pod.name, check=False)
        assert not found, found


def _grep(needle: bytes, roots: list[Path]) -> list[str]:
    import subprocess

    found = []
    for root in roots:
        done = subprocess.run(["grep", "-rlF", "--devices=skip", "-e", needle.decode(), str(root)],
                              capture_output=True, text=True, timeout=900)
        found += done.stdout.split()
    return found


# =================================================================================================
# The image's own entrypoint: tini -> kaito-entrypoint -> kaito-run
# =================================================================================================


@pytest.fixture(scope="class")
def served(image, hub, token_file):
    port = free_port()
    name = f"kaito-test-entrypoint-{os.getpid()}"
    container = Container(name, image.tag, [
        "--model", REPO_ID, "--revision", hub.commit_of(REPO_ID), "--served-model-name", "tiny-llama",
        "--host", "127.0.0.1", "--port", str(port), "--grace-period", str(GRACE_S),
    ], port=port, options=[
        "-v", f"{token_file}:/run/secrets/hf-token:ro", "-e", "KAITO_HF_TOKEN_FILE=/run/secrets/hf-token",
        "-e", f"HF_ENDPOINT={hub.url}", "-e", "HF_HUB_DISABLE_XET=1", "--health-interval", "disable",
    ])
    try:
        container.wait_ready(READY_S)
        yield container
    finally:
        container.close()


class TestEntrypoint:
    def test_tini_is_pid_1_and_podman_stop_lets_the_request_in_flight_finish_then_exits_0(self, served):
        running = processes(served)
        pid1 = next(cmd for pid, _, cmd in running if pid == 1)
        assert pid1.startswith("/usr/bin/tini -- /usr/local/bin/kaito-entrypoint"), pid1
        assert any("kaito-run" in cmd for _, _, cmd in running), running

        answer: dict = {}

        def ask() -> None:
            body = {"model": "tiny-llama", "prompt": "Once upon a time", "max_tokens": 200,
                    "ignore_eos": True, "temperature": 0}
            answer["status"], answer["text"] = http(f"http://127.0.0.1:{served.port}/v1/completions", body,
                                                    timeout=GRACE_S + 60)

        asking = threading.Thread(target=ask)
        asking.start()
        time.sleep(0.5)  # the request is in vLLM before the stop
        started = time.monotonic()
        stopped = podman("stop", "--time", str(GRACE_S + 20), served.name, check=False, timeout=GRACE_S + 60)
        took = time.monotonic() - started
        asking.join(GRACE_S + 60)
        code = served.wait_exit(10)
        logs = served.logs()
        assert stopped.returncode == 0, stopped.stderr
        assert code == 0, f"exit {code} after {took:.1f} s:\n{logs[-4000:]}"
        assert took < GRACE_S + 10, took
        assert answer.get("status") == 200, (answer, logs[-3000:])
        assert json.loads(answer["text"])["usage"]["completion_tokens"] == 200
        assert "SIGTERM" in logs, logs[-3000:]
        container_id = json.loads(podman("inspect", served.name).stdout)[0]["Id"]
        assert _host_processes_of(container_id) == []


def _host_processes_of(container_id: str) -> list[str]:
    left = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if container_id in (entry / "cgroup").read_text():
                    left.append(entry.name)
            except OSError:
                continue
    return left


# =================================================================================================
# KAITO's two-node StatefulSet in two containers
# =================================================================================================


def kaito_statefulset_script(hub) -> str:
    """KAITO's multi-node pod command (StatefulSet, 2 nodes), unchanged but for the TP size."""
    return (
        'if [ "${POD_INDEX}" = "0" ]; then '
        "/workspace/vllm/multi-node-serving.sh leader --ray_cluster_size=2 --ray_port=6379; "
        f"python3 /workspace/vllm/inference_api.py --model={REPO_ID} --code-revision={hub.commit_of(REPO_ID)} "
        "--download-dir=/workspace/weights --tensor-parallel-size=1 --pipeline-parallel-size=2 "
        "--distributed-executor-backend=ray --gpu-memory-utilization=0.84 --max-model-len=auto "
        "--served-model-name=tiny-llama; "
        f"else /workspace/vllm/multi-node-serving.sh worker --ray_address={LEADER_DNS} --ray_port=6379; fi"
    )


@pytest.fixture(scope="class")
def group(image, hub, token_file):
    master_port = free_port(span=2)
    containers = []
    try:
        for rank in (0, 1):
            port = free_port()
            name = f"kaito-test-ws-{rank}-{os.getpid()}"
            containers.append(Container(name, image.tag, ["-c", kaito_statefulset_script(hub)], port=port, options=[
                # KAITO gives its pods a memory-backed /dev/shm (an emptyDir); podman's default is 64 MB.
                "--shm-size", "1g",
                "--entrypoint", "/bin/sh", "--hostname", f"ws-{rank}", "--add-host", f"{LEADER_DNS}:127.0.0.1",
                # The StatefulSet's short leader name (ws-0.ws-headless), which the pod's DNS search
                # domains resolve in a cluster.
                "--add-host", f"{LEADER_DNS.split('.default.')[0]}:127.0.0.1",
                "-e", f"POD_INDEX={rank}",
                "-v", f"{token_file}:/run/secrets/hf-token:ro", "-e", "KAITO_HF_TOKEN_FILE=/run/secrets/hf-token",
                # Two pods on one host network: each its own port and core; the group's master port.
                "-e", f"HF_ENDPOINT={hub.url}", "-e", "HF_HUB_DISABLE_XET=1", "-e", f"KAITO_PORT={port}",
                "-e", f"KAITO_MASTER_PORT={master_port}", "-e", f"KAITO_CPU_CORES={rank}",
                "-e", f"KAITO_PEER_TIMEOUT={PEER_TIMEOUT_S}", "-e", f"KAITO_GRACE_PERIOD={GRACE_S}",
                # No restart budget: a lost member ends the group (with one, the group would wait
                # for a new rank 1 to meet again in the next round).
                "-e", "KAITO_MAX_RESTARTS=0",
                "--health-interval", "disable",
            ]))
        containers[0].wait_ready(READY_S)
        yield containers[0], containers[1]
    finally:
        for container in reversed(containers):
            container.close()


class TestKaitoTwoNodeStatefulSet:
    def test_the_group_serves_through_the_leader_and_a_killed_worker_ends_the_leader(self, group):
        leader, worker = group
        assert chat(leader.port)["choices"][0]["message"]["content"]
        assert http(f"http://127.0.0.1:{worker.port}/health")[0] == 200  # the worker's launcher
        assert "joined the group of" in worker.logs()
        for probe, node in (("liveness", worker), ("readiness", leader)):
            done = node.exec("python3", "/workspace/vllm/multi-node-health-check.py", probe,
                             f"--leader-address={LEADER_DNS}")
            assert done.returncode == 0, (probe, done.stdout, done.stderr)

        before = leader.logs()
        killed = time.monotonic()
        podman("kill", worker.name)
        code = leader.wait_exit(PEER_TIMEOUT_S + GRACE_S + 15)
        took = time.monotonic() - killed
        logs = leader.logs()
        assert code == 22, f"leader exit {code} after {took:.0f} s:\n{logs[-4000:]}"
        # Which line names the loss depends on what the leader sees first: rank 1's launcher
        # silent for the peer timeout, or its own vLLM losing the pipeline stage on rank 1.
        assert "rank 1" in logs[len(before):], logs[-3000:]
        assert took < PEER_TIMEOUT_S + GRACE_S + 15

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
  name mapped to loopback), with a restart budget of one per node: a chat through the leader;
  `podman kill` of the worker and a new worker container with the same command (a recreated
  pod): the group meets again in round 2 and serves, the leader's kaito-run never exits; the new
  worker's vLLM killed twice spends its one restart: both containers exit 22, and each one's
  termination message (/dev/termination-log) says why (docs/multi-node.md).

Tools missing (podman, buildah, runc, root): skip with one line; under CI=true: fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.support.containers import Container, build, chat, http, inspect_image, podman
from tests.support.hardening import leaked
from tests.support.launcher_log import times_ready
from tests.support.ports import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent.parent
TINY_MODEL = REPO / "models" / "tiny-llama"
REPO_ID = "kaito-test/tiny-llama"
TOKEN = "hf_Qm2Xw9Lp4Rt8Zk3Vb6NjYc7Hd5GfUa"  # granted access to the gated tiny repo
READY_S = 600
GRACE_S = 30
PEER_TIMEOUT_S = 10
MAX_RESTARTS = 1  # the two-node group's restart budget, per node (KAITO_MAX_RESTARTS)
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


class Proc(NamedTuple):
    pid: int
    ppid: int
    uid: int
    argv: list[str]

    @property
    def cmd(self) -> str:
        return " ".join(self.argv)


def processes(container: Container) -> list[Proc]:
    """Every process in the container but the one that lists them."""
    script = (
        "import os, json\n"
        "me = os.getpid()\n"
        "out = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = dict(l.split(':', 1) for l in open(f'/proc/{pid}/status') if ':' in l)\n"
        "        argv = [a for a in open(f'/proc/{pid}/cmdline', 'rb').read().decode().split('\\0') if a]\n"
        "    except OSError:\n"
        "        continue\n"
        "    if int(pid) != me:\n"
        "        out.append((int(pid), int(status['PPid']), int(status['Uid'].split()[0]), argv))\n"
        "print(json.dumps(out))\n"
    )
    done = container.exec("python3", "-c", script)
    assert done.returncode == 0, done.stderr
    return [Proc(*row) for row in json.loads(done.stdout)]


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
        commands = " | ".join(p.cmd for p in running)
        assert "kaito_runtime" in commands or "kaito-run" in commands, commands
        assert "vllm" in commands.lower(), commands
        assert {p.uid for p in running} == {UID}, running

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
        pid1 = next(p.cmd for p in running if p.pid == 1)
        assert pid1.startswith("/usr/bin/tini -- /usr/local/bin/kaito-entrypoint"), pid1
        assert any("kaito-run" in p.cmd for p in running), running

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


class StatefulSet:
    """KAITO's two-node StatefulSet as containers: one pod per rank (ws-0 leads), each with the same
    command and settings. A recreated pod is a new container of the same name and command, as the
    StatefulSet controller recreates ws-1; each container gets its own termination message file,
    mounted where the kubelet mounts it (/dev/termination-log)."""

    def __init__(self, image, hub, token_file: Path, folder: Path, max_restarts: int = MAX_RESTARTS) -> None:
        self.image, self.hub, self.token_file, self.folder = image, hub, token_file, folder
        self.max_restarts = max_restarts
        self.master_port = free_port(span=2)
        self.ports = {rank: free_port() for rank in (0, 1)}  # KAITO's pods all use 5000; here each its own
        self.pods: dict[int, Container] = {}
        self.messages: dict[int, Path] = {}

    def start(self, rank: int) -> Container:
        message = self.folder / f"termination-log-{rank}-{len(self.messages)}"
        message.write_text("")
        message.chmod(0o666)  # the kubelet's file is writable by the container's user
        self.messages[rank] = message
        name = f"kaito-test-ws-{rank}-{os.getpid()}-budget-{self.max_restarts}"
        self.pods[rank] = Container(name, self.image.tag, ["-c", kaito_statefulset_script(self.hub)],
                                    port=self.ports[rank], options=[
            # KAITO gives its pods a memory-backed /dev/shm (an emptyDir); podman's default is 64 MB.
            "--shm-size", "1g",
            "--entrypoint", "/bin/sh", "--hostname", f"ws-{rank}", "--add-host", f"{LEADER_DNS}:127.0.0.1",
            # The StatefulSet's short leader name (ws-0.ws-headless), which the pod's DNS search
            # domains resolve in a cluster.
            "--add-host", f"{LEADER_DNS.split('.default.')[0]}:127.0.0.1",
            "-e", f"POD_INDEX={rank}",
            "-v", f"{self.token_file}:/run/secrets/hf-token:ro", "-e", "KAITO_HF_TOKEN_FILE=/run/secrets/hf-token",
            "-v", f"{message}:/dev/termination-log",
            # Two pods on one host network: each its own port and core; the group's master port.
            "-e", f"HF_ENDPOINT={self.hub.url}", "-e", "HF_HUB_DISABLE_XET=1", "-e", f"KAITO_PORT={self.ports[rank]}",
            "-e", f"KAITO_MASTER_PORT={self.master_port}", "-e", f"KAITO_CPU_CORES={rank}",
            "-e", f"KAITO_PEER_TIMEOUT={PEER_TIMEOUT_S}", "-e", f"KAITO_GRACE_PERIOD={GRACE_S}",
            # One restart per node (issue 21): a recreated pod is a membership change and spends
            # none; the worker's vLLM failing twice spends its one and ends the group.
            "-e", f"KAITO_MAX_RESTARTS={self.max_restarts}",
            "--health-interval", "disable",
        ])
        return self.pods[rank]

    def message(self, rank: int) -> str:
        """What the kubelet would show as the pod's termination message."""
        return self.messages[rank].read_text()

    def wait_serving(self, round_: int) -> None:
        """Both pods keep running while the group meets again, until the leader is ready in
        ``round_`` (its readiness needs the worker's vLLM too)."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            leader_log = self.pods[0].logs()
            if times_ready(leader_log) >= round_:
                return
            for rank, pod in self.pods.items():
                if not pod.running():
                    pytest.fail(f"rank {rank}'s container exited {pod.state().get('ExitCode')} instead of meeting "
                                f"again in round {round_}:\n{pod.logs()[-4000:]}")
            time.sleep(2)
        pytest.fail(f"round {round_} did not serve after {READY_S} s:\n{self.pods[0].logs()[-3000:]}\n---\n"
                    f"{self.pods[1].logs()[-2000:]}")

    def close(self) -> None:
        for rank in sorted(self.pods, reverse=True):
            self.pods[rank].close()


def _serving_statefulset(image, hub, token_file, folder: Path, max_restarts: int):
    pods = StatefulSet(image, hub, token_file, folder, max_restarts)
    try:
        for rank in (0, 1):
            pods.start(rank)
        pods.pods[0].wait_ready(READY_S)
        yield pods
    finally:
        pods.close()


@pytest.fixture(scope="class")
def statefulset(image, hub, token_file, tmp_path_factory):
    yield from _serving_statefulset(image, hub, token_file, tmp_path_factory.mktemp("statefulset"), MAX_RESTARTS)


@pytest.fixture(scope="class")
def statefulset_without_budget(image, hub, token_file, tmp_path_factory):
    yield from _serving_statefulset(image, hub, token_file, tmp_path_factory.mktemp("no-budget"), 0)


def launcher_pid(container: Container) -> int:
    """The pid of kaito-run in the container (the leader's: python3 inference_api.py, exec'd)."""
    running = processes(container)
    found = [p.pid for p in running if any(Path(arg).name == "kaito-run" or arg == "kaito_runtime.cli" for arg in p.argv[:3])]
    assert len(found) == 1, running
    return found[0]


def kill_vllm(container: Container, *, not_pids: frozenset[int] = frozenset(), timeout: float = READY_S) -> int:
    """SIGKILL to the main process of the vLLM that runs, once there is one not in ``not_pids``;
    its pid. That is kaito-run's child that has started processes of its own (vLLM's engine), not
    its watchdog nor the standby vLLM that waits, idle, for the next round (docs/multi-node.md)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = processes(container)
        launcher, parents = launcher_pid(container), {p.ppid for p in running}
        vllm = [p.pid for p in running if p.ppid == launcher and p.pid in parents and "vllm" in p.cmd.lower()
                and p.pid not in not_pids]
        if vllm:
            done = container.exec("python3", "-c", f"import os; os.kill({vllm[0]}, 9)")
            assert done.returncode == 0, done.stderr
            return vllm[0]
        time.sleep(1)
    pytest.fail(f"no new vLLM under kaito-run in {container.name} after {timeout} s:\n{container.logs()[-3000:]}")


class TestKaitoTwoNodeStatefulSet:
    def test_the_group_meets_again_with_a_recreated_worker_pod_and_both_pods_end_once_the_budget_is_spent(
            self, statefulset):
        leader, worker = statefulset.pods[0], statefulset.pods[1]
        assert chat(leader.port)["choices"][0]["message"]["content"]
        assert http(f"http://127.0.0.1:{worker.port}/health")[0] == 200  # the worker's launcher
        assert "joined the group of" in worker.logs()
        for probe, node in (("liveness", worker), ("readiness", leader)):
            done = node.exec("python3", "/workspace/vllm/multi-node-health-check.py", probe,
                             f"--leader-address={LEADER_DNS}")
            assert done.returncode == 0, (probe, done.stdout, done.stderr)
        launcher = launcher_pid(leader)

        # A recreated worker pod: its container killed, a new one with the same command. The group
        # meets again in round 2 without the leader's launcher ever exiting, and serves.
        killed = time.monotonic()
        podman("kill", worker.name)
        worker = statefulset.start(1)
        statefulset.wait_serving(2)
        print(f"recreated worker pod: serving again {time.monotonic() - killed:.1f} s after the kill")
        assert chat(leader.port)["choices"][0]["message"]["content"]
        assert launcher_pid(leader) == launcher  # the same kaito-run, in the same container
        status, body = http(f"http://127.0.0.1:{worker.port}/health")
        assert status == 200 and body.startswith("ok (group running, round 2, restarts 0)"), body
        leader_log = leader.logs()
        assert "group restarting: round 2" in leader_log, leader_log[-3000:]
        assert "joined the group of" in worker.logs()

        # The budget spent: the new worker's vLLM killed (restart 1 of 1: round 3), and again once
        # round 3 has started it (a vLLM that dies while it starts fails all the same): both pods
        # exit 22, and each one's termination message says why.
        first = kill_vllm(worker)
        kill_vllm(worker, not_pids=frozenset({first}))
        ended = time.monotonic()
        codes = {rank: pod.wait_exit(GRACE_S + 60) for rank, pod in statefulset.pods.items()}
        print(f"budget spent: both pods exited {time.monotonic() - ended:.1f} s after the second kill")
        logs = {rank: pod.logs() for rank, pod in statefulset.pods.items()}
        assert codes == {0: 22, 1: 22}, (codes, logs[0][-3000:], logs[1][-3000:])
        assert "rank 1 restarts the group (1 of 1)" in logs[1] and "group restarting: round 3" in logs[0]
        assert "rank 1 has spent its 1 restart" in logs[0], logs[0][-3000:]
        messages = {rank: statefulset.message(rank) for rank in (0, 1)}
        print(f"termination messages: {messages}")
        for rank, message in messages.items():  # one line, naming the rank and the spent budget
            assert message.strip().endswith("(exit 22)") and "\n" not in message.strip(), (rank, message)
            assert "vLLM on rank 1 exited (killed by SIGKILL); rank 1 has spent its 1 restart" in message, (rank, message)


class TestKaitoTwoNodeStatefulSetWithoutRestartBudget:
    def test_podman_kill_of_the_worker_ends_the_leaders_container_non_zero_within_the_peer_timeout(
            self, statefulset_without_budget):
        pods = statefulset_without_budget
        leader, worker = pods.pods[0], pods.pods[1]
        assert chat(leader.port)["choices"][0]["message"]["content"]
        killed = time.monotonic()
        podman("kill", worker.name)
        code = leader.wait_exit(PEER_TIMEOUT_S + 20)
        took = time.monotonic() - killed
        print(f"no restart budget: the leader's container exited {code} {took:.1f} s after podman kill of the worker")
        log = leader.logs()
        assert code not in (0, None), (code, log[-3000:])
        assert "group restarting" not in log, log[-3000:]
        message = pods.message(0).strip()
        assert message.endswith(f"(exit {code})") and "\n" not in message and "rank 1" in message, message

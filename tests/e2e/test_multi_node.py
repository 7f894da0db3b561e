"""Two nodes on loopback through real vLLM on the CPU: two `kaito-run` launchers, TP 2 across
them (one core each), vLLM's mp backend, no Ray.

User stories:
- A group serves: a chat request through the leader gets a completion, and the worker's launcher
  answers /health with 200 for its probe. Every key of its store, read as an outside client
  would, holds neither the API key nor the group secret; a forged stop notice and a forged
  check-in change nothing.
- A worker's vLLM dies (kill -9): neither launcher exits, the group meets again in round 2 and
  serves; the worker spent a restart, the leader none. The worker's vLLM stopped (SIGSTOP): found
  hung within the peer timeout, round 3 serves. A third loss spends the budget (--max-restarts 2):
  both launchers exit 22 naming rank 1, and nothing is left running.
- A worker told only the leader's address (--join, as KAITO starts its workers) learns the model
  and settings from the leader and serves with it; its launcher killed (kill -9) and a new one
  started for the same rank (a recreated pod): the group meets again and serves; Kubernetes stops
  the group (SIGTERM to both pods at once) while three streaming completions run through the
  leader: the worker keeps its vLLM until the leader has drained, every stream gets all its
  tokens, and both launchers exit 0 within the grace period.
- A node that never comes, a node started with other settings, or two nodes with one rank: the
  group never starts vLLM, and every node says why.
- Two nodes in two network namespaces joined by a veth pair: cutting the link ends every node
  within the peer timeout plus a few seconds, and nothing is left running.

Three serving groups in all (one restarted twice and then out of restarts, one with a replaced worker
then stopped, one cut off); the refusals start no vLLM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from kaito_runtime.launch.vllm_install import detect_vllm
from tests.support.ci import need_vllm
from tests.support.group_helpers import namespaces_or_skip
from tests.support.launcher_log import times_ready
from tests.support.ports import free_port
from tests.support.streams import start_streams

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TINY_MODEL = REPO / "models" / "tiny-llama"
KAITO_RUN = Path(sys.executable).parent / "kaito-run"
READY_TIMEOUT = 420  # two vLLM processes sharing two cores
GRACE_SECONDS = 15
KAITO_GRACE_SECONDS = 30  # the KAITO pods drain three streams on two shared cores (--shutdown-timeout 25)
DRAIN_TOKENS = 48
PEER_TIMEOUT = 8
API_KEY = "sk-e2e-group-api-key-0123456789"
GROUP_SECRET = "e2e-group-secret-0123456789abcdef"

need_vllm(detect_vllm() is not None and KAITO_RUN.exists())


class Node:
    """One launcher of the group (a process group of its own), its log and what it started."""

    def __init__(self, tmp: Path, rank: int, master_port: int, *extra: str, nnodes: int = 2, name: str | None = None,
                 argv: list[str] | None = None, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.rank = rank
        self.master_port = master_port
        self.port = port or free_port()
        self.log = tmp / f"{name or f'rank{rank}'}.log"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "KAITO_", "HUGGING_FACE", "VLLM_"))}
        # Each node its own metrics port, as each pod has: two launchers on one machine would
        # both take the default 5090, and one would only warn.
        base.update(HF_HOME=str(tmp / f"hf-home-{name or rank}"), PYTHONUNBUFFERED="1",
                    KAITO_METRICS_PORT=str(free_port()))
        # A --join worker is told only the leader's address and its own rank, ports and cores.
        what = [] if "--join" in extra else ["--model", str(TINY_MODEL), "--nnodes", str(nnodes)]
        self.argv = argv or [
            str(KAITO_RUN), *what, "--node-rank", str(rank),
            "--leader-address", "127.0.0.1", "--master-port", str(master_port),
            "--host", "127.0.0.1", "--port", str(self.port), "--cpu-cores", str(rank % 2),
            "--grace-period", str(GRACE_SECONDS), *extra,
        ]
        self.env = env
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(self.argv, env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=tmp, start_new_session=True)
        self.seen: set[psutil.Process] = set()

    def terminate(self) -> None:
        """SIGTERM to the node's process group, as `docker stop` through tini or the kubelet does."""
        os.killpg(self.proc.pid, signal.SIGTERM)

    def launcher(self) -> psutil.Process:
        """The kaito-run process (the node's own process, or below a pod's /bin/sh)."""
        me = psutil.Process(self.proc.pid)
        for proc in [me, *me.children(recursive=True)]:
            if any("kaito-run" in part or "kaito_runtime.cli" in part for part in proc.cmdline()[:3]):
                return proc
        raise AssertionError(f"no kaito-run under rank {self.rank}:\n{self.text()[-2000:]}")

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def note_processes(self) -> None:
        try:
            self.seen.update(psutil.Process(self.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass

    def left_behind(self) -> list[str]:
        alive = []
        for proc in self.seen:
            try:
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]}")
            except psutil.NoSuchProcess:
                continue
        return alive

    def vllm_main(self) -> psutil.Process:
        children = self.launcher().children()
        assert children, f"rank {self.rank} has no vLLM child:\n{self.text()[-3000:]}"
        return children[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.terminate()
            try:
                self.proc.wait(KAITO_GRACE_SECONDS + 15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for proc in self.seen:  # a failed test must not leave vLLM running for the next one
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def wait_ready(leader: Node, worker: Node) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        leader.note_processes()
        worker.note_processes()
        if times_ready(leader.text()):
            return
        for node in (leader, worker):
            if node.proc.poll() is not None:
                pytest.fail(f"rank {node.rank} exited with {node.proc.returncode} before the group was ready:\n"
                            f"{node.text()[-4000:]}\n--- the other node:\n"
                            f"{(worker if node is leader else leader).text()[-2000:]}")
        time.sleep(1)
    pytest.fail(f"the group was not ready after {READY_TIMEOUT} s:\n{leader.text()[-3000:]}\n---\n{worker.text()[-2000:]}")


def wait_all(nodes: list[Node], timeout: float) -> float:
    started = time.monotonic()
    for node in nodes:
        try:
            node.proc.wait(max(0.1, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank {node.rank} still running {timeout} s later:\n{node.text()[-3000:]}")
    return time.monotonic() - started


def health(node: Node) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/health", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def chat(node: Node, api_key: str | None = None) -> dict:
    payload = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{node.port}/v1/chat/completions",
                                     data=json.dumps(payload).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=180) as response:
        assert response.status == 200
        return json.loads(response.read())


def kaito_lines(node: Node) -> str:
    return "\n".join(line for line in node.text().splitlines() if "kaito-run:" in line)


def read_every_key(port: int) -> dict[str, str]:
    """Every key of a running group's store, read as an outside client would (it knows the key
    layout from the source; the store's own key count says nothing was missed)."""
    import datetime

    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=10))
    prefix, found = "kaito/v2/", {}

    def take(key: str) -> bool:
        if store.check([prefix + key]):
            found[key] = store.get(prefix + key).decode(errors="replace")
            return True
        return False

    take("leader/request")
    take("round")
    take("r1/leader")
    take("r1/verdict")
    for counter in ["r1/verdict_reads", "r1/stops", *(f"r1/arrivals/{rank}" for rank in (0, 1))]:
        if store.check([prefix + counter]):
            found[counter] = str(store.add(prefix + counter, 0))
    for rank in (0, 1):
        take(f"r1/beat/{rank}")
        take(f"r1/seen/{rank}")
        for n in range(1, int(found.get(f"r1/arrivals/{rank}", "0")) + 1):
            take(f"r1/checkin/{rank}/{n}")
    for n in range(1, int(found.get("r1/stops", "0")) + 1):
        take(f"r1/stop/{n}")
    assert store.num_keys() == len(found), (store.num_keys(), sorted(found))
    return found


def forge_stop_and_check_in(port: int) -> None:
    """A stop notice and a check-in from someone without the group secret (none, and a guess)."""
    from kaito_runtime.launch.group import GroupSecret, StopKind, StopNotice
    from kaito_runtime.launch.group.store import CheckIn, GroupStore

    for secret in (None, GroupSecret(b"a-guess-at-the-group-secret", "test")):
        forger = GroupStore.join("127.0.0.1", port, timeout_s=10, secret=secret)
        forger.announce_stop(1, StopNotice(0, StopKind.REQUESTED, "forged: rank 0 was asked to stop", by=0))
        forger.check_in(CheckIn(rank=1, host_ip="10.9.9.9", hostname="forger", resources={}, kaito_runtime_version="0",
                                vllm_version="0", plan_fields={}, weights_complete=True))


KAITO = REPO / "entrypoints" / "kaito"
REPO_ID = "kaito-test/tiny-llama"


def kaito_pods(tmp: Path, hub) -> tuple[Node, Node]:
    """KAITO's own StatefulSet script for 2 nodes (Ray leader + Ray worker), unchanged but for the
    paths, run by /bin/sh in two "pods": the leader's inference_api.py gets the model flags, the
    worker only `--ray_address`. PP 2 across the nodes, as KAITO plans multi-node models."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    script = (
        'if [ "${POD_INDEX}" = "0" ]; then '
        f"{KAITO}/multi-node-serving.sh leader --ray_cluster_size=2 --ray_port=6379; "
        f"python3 {KAITO}/inference_api.py --model={REPO_ID} --code-revision={hub.commit_of(REPO_ID)} "
        f"--download-dir={tmp}/weights-0 --tensor-parallel-size=1 --pipeline-parallel-size=2 "
        "--distributed-executor-backend=ray --gpu-memory-utilization=0.84 --max-model-len=auto "
        "--served-model-name=tiny-llama; "
        f"else {KAITO}/multi-node-serving.sh worker --ray_address=127.0.0.1 --ray_port=6379; fi"
    )
    master_port = free_port(span=2)
    nodes = []
    for rank in (0, 1):
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO), "POD_INDEX": str(rank),
               "HOSTNAME": f"kaito-e2e-node{rank}", "HF_ENDPOINT": hub.url, "KAITO_LEADER_ADDRESS": "127.0.0.1",
               "KAITO_MASTER_PORT": str(master_port), "KAITO_CPU_CORES": str(rank), "KAITO_GRACE_PERIOD": str(KAITO_GRACE_SECONDS),
               "KAITO_WEIGHTS_DIR": str(tmp / f"weights-{rank}"), "KAITO_HOST": "127.0.0.1",
               "KAITO_PEER_TIMEOUT": str(PEER_TIMEOUT)}
        port = free_port()  # KAITO pods all use 5000; on one machine each needs its own
        env["KAITO_PORT"] = str(port)
        nodes.append(Node(tmp, rank, master_port, argv=["/bin/sh", "-c", script], env=env, name=f"pod{rank}", port=port))
    return nodes[0], nodes[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    import shutil

    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("mn-hub")
    shutil.copytree(TINY_MODEL, root / REPO_ID)
    with HubEmulator(root, lfs_threshold=100_000) as emulator:
        yield emulator


@pytest.fixture(params=["told", "kaito"])
def group(tmp_path, request, hub):
    """A serving group: "told": two kaito-run launchers given everything; "kaito": KAITO's
    StatefulSet commands through entrypoints/kaito/ (the worker learns the model from the leader)."""
    if request.param == "kaito":
        leader, worker = kaito_pods(tmp_path, hub)
    else:  # with an API key and a group secret, both from the environment (never in argv)
        master_port = free_port(span=2)
        secrets = {"VLLM_API_KEY": API_KEY, "KAITO_GROUP_SECRET": GROUP_SECRET, "KAITO_MAX_RESTARTS": "2",
                   "KAITO_PEER_TIMEOUT": str(PEER_TIMEOUT)}
        leader = Node(tmp_path, 0, master_port, env=secrets)
        worker = Node(tmp_path, 1, master_port, env=secrets)
    try:
        wait_ready(leader, worker)
        yield leader, worker
    finally:
        worker.stop()
        leader.stop()


@pytest.mark.parametrize("group", ["told"], indirect=True)
def test_a_group_serves_restarts_in_place_and_dies_as_one_once_the_budget_is_spent(group):
    leader, worker = group
    answer = chat(leader, API_KEY)
    assert answer["choices"][0]["message"]["content"]
    assert health(worker) == 200
    assert "group released: all 2 nodes checked in and agree" in leader.text()
    assert "group released" in worker.text()

    values = read_every_key(leader.master_port + 1)
    assert len(values) > 10 and any("checkin" in key for key in values)
    for key, value in values.items():
        assert API_KEY not in value and GROUP_SECRET not in value, key
    forge_stop_and_check_in(leader.master_port + 1)
    time.sleep(3)  # a few heartbeats and stop-notice reads on both nodes
    assert leader.proc.poll() is None and worker.proc.poll() is None
    assert health(worker) == 200 and chat(leader, API_KEY)["choices"][0]["message"]["content"]
    assert "does not carry the group secret's tag" in leader.text() + worker.text()

    # issue 21: kill -9 of the worker's vLLM: neither launcher exits, the group serves again in
    # round 2; only the worker spent a restart.
    killed_at = time.monotonic()
    worker.vllm_main().send_signal(signal.SIGKILL)
    wait_serving_again(leader, worker, 2)
    print(f"kill -9: serving again {time.monotonic() - killed_at:.1f} s after the kill")
    assert chat(leader, API_KEY)["choices"][0]["message"]["content"]
    assert health_body(worker).startswith("ok (group running, round 2, restarts 1)")
    assert "restarts spent on rank 0: 0 of 2" in kaito_lines(leader)
    assert "rank 1 restarts the group (1 of 2)" in kaito_lines(leader)

    # A hung member: the worker's vLLM stopped (SIGSTOP) while its launcher keeps beating.
    stopped_at = time.monotonic()
    worker.vllm_main().send_signal(signal.SIGSTOP)
    wait_serving_again(leader, worker, 3)
    lines = kaito_lines(worker)
    assert "vLLM on rank 1 is hung" in lines, lines[-3000:]
    detected = [line for line in lines.splitlines() if "is hung" in line]
    print(f"SIGSTOP: detected, serving again {time.monotonic() - stopped_at:.1f} s after the stop")
    assert detected and chat(leader, API_KEY)["choices"][0]["message"]["content"]

    # The budget spent: every node exits 22 naming the rank, and nothing is left running.
    killed_at = time.monotonic()
    worker.vllm_main().send_signal(signal.SIGKILL)
    took = wait_all([worker, leader], 60)
    assert leader.proc.returncode == 22, kaito_lines(leader)[-3000:]
    assert worker.proc.returncode == 22, kaito_lines(worker)[-3000:]
    assert "rank 1 has spent its 2 restarts" in kaito_lines(leader)
    assert "rank 1" in kaito_lines(worker)
    print(f"budget spent: both exited {took:.1f} s after the last kill")
    assert leader.left_behind() == [] and worker.left_behind() == []


def wait_serving_again(leader: Node, worker: Node, round_: int, timeout: float = READY_TIMEOUT) -> None:
    """Both launchers stay up while the group meets again and the leader is ready in ``round_``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader.note_processes()
        worker.note_processes()
        for node in (leader, worker):
            if node.proc.poll() is not None:
                pytest.fail(f"rank {node.rank} exited with {node.proc.returncode} instead of restarting:\n"
                            f"{kaito_lines(node)[-3000:]}")
        if times_ready(leader.text()) >= round_:  # the leader's readiness needs the worker's vLLM too
            return
        time.sleep(1)
    pytest.fail(f"round {round_} did not serve:\n{kaito_lines(leader)[-3000:]}\n---\n{kaito_lines(worker)[-2000:]}")


def health_body(node: Node) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/health", timeout=5) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return f"{exc.code} {exc.read().decode()}"


@pytest.mark.parametrize("group", ["kaito"], indirect=True)
def test_kaitos_own_commands_serve_without_ray_and_sigterm_to_the_group_drains_every_stream_with_exit_0(group):
    leader, worker = group
    assert "joined the group of 127.0.0.1:" in worker.text() and "2 nodes" in worker.text()
    assert "--pipeline-parallel-size 2" in leader.text() and "ray" not in kaito_lines(leader).split("starting vLLM")[1]
    assert chat(leader)["choices"][0]["message"]["content"]
    assert health(worker) == 200
    for probe, node in (("liveness", worker), ("readiness", leader)):
        checked = subprocess.run([sys.executable, str(KAITO / "multi-node-health-check.py"), probe,
                                  "--leader-address=127.0.0.1", f"--vllm-port={node.port}"],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, (probe, checked.stderr)
    # A recreated worker pod: its launcher killed, a new one for the same rank (same weights folder).
    replaced_at = time.monotonic()
    worker.launcher().send_signal(signal.SIGKILL)
    worker.proc.wait(30)
    old = worker
    worker = Node(old.log.parent, 1, old.master_port, argv=old.argv, env=old.env, name="pod1-b", port=old.port)
    try:
        wait_serving_again(leader, worker, 2)
        print(f"replaced worker: serving again {time.monotonic() - replaced_at:.1f} s after the kill")
        assert "the group runs in round 1: waiting for it to meet again" in kaito_lines(worker)
        assert chat(leader)["choices"][0]["message"]["content"]
        assert health(worker) == 200
    except BaseException:
        worker.stop()
        raise
    # Issue 19 item 4 on a group: the kubelet signals every pod of the group at once while three
    # streams run through the leader. The pod's /bin/sh waits for kaito-run and exits with its
    # code; the stop reaches kaito-run.
    payload = {"model": "tiny-llama", "prompt": "import os", "max_tokens": DRAIN_TOKENS, "ignore_eos": True,
               "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    first_chunk, results, threads = start_streams(f"http://127.0.0.1:{leader.port}", payload, 3,
                                                  timeout=KAITO_GRACE_SECONDS + 120)
    for event in first_chunk:
        assert event.wait(120)
    signalled = time.monotonic()
    for node in (leader, worker):
        node.launcher().send_signal(signal.SIGTERM)
    took = wait_all([leader, worker], KAITO_GRACE_SECONDS + 10)
    for t in threads:
        t.join(30)
    assert all("error" not in r and r["finish"] == "length" and r["tokens"] == DRAIN_TOKENS for r in results), (
        results, kaito_lines(leader)[-2000:], kaito_lines(worker)[-2000:])
    assert leader.proc.returncode == 0, kaito_lines(leader)
    assert worker.proc.returncode == 0, kaito_lines(worker)
    assert took <= KAITO_GRACE_SECONDS, took
    held, released = kaito_lines(worker).index("vLLM keeps serving its group until the leader has drained"), \
        kaito_lines(worker).index("group stopping: rank 0 was asked to stop (SIGTERM)")
    assert held < released
    assert "has not drained" not in kaito_lines(worker)  # released by the leader's notice, not the deadline
    print(f"group drain: SIGTERM to both exits {took:.1f} s (grace {KAITO_GRACE_SECONDS} s), "
          f"{len(results)} streams of {DRAIN_TOKENS} tokens finished, {time.monotonic() - signalled:.1f} s in all")
    assert leader.left_behind() == [] and worker.left_behind() == []



def test_a_rank_that_never_starts_ends_the_leader_after_the_rendezvous_timeout(tmp_path):
    leader = Node(tmp_path, 0, free_port(span=2), "--rendezvous-timeout", "8")
    try:
        started = time.monotonic()
        wait_all([leader], 60)
        lines = kaito_lines(leader)
        assert leader.proc.returncode == 21, lines
        assert "rank 1 never checked in" in lines
        assert "starting vLLM" not in lines
        assert time.monotonic() - started < 60
    finally:
        leader.stop()


def test_a_node_with_other_settings_stops_every_node_with_exit_2_naming_the_field(tmp_path):
    master_port = free_port(span=2)
    leader = Node(tmp_path, 0, master_port, "--rendezvous-timeout", "60")
    worker = Node(tmp_path, 1, master_port, "--rendezvous-timeout", "60", "--max-model-len", "256")
    try:
        wait_all([leader, worker], 90)
        for node in (leader, worker):
            lines = kaito_lines(node)
            assert node.proc.returncode == 2, lines
            assert "rank 1 differs from the leader in --max-model-len: 256 on rank 1, 512 on rank 0" in lines
            assert "starting vLLM" not in lines
    finally:
        worker.stop()
        leader.stop()


def test_two_nodes_with_one_rank_stop_every_node_naming_the_rank(tmp_path):
    master_port = free_port(span=2)
    leader = Node(tmp_path, 0, master_port, "--rendezvous-timeout", "60")
    first = Node(tmp_path, 1, master_port, "--rendezvous-timeout", "60", name="rank1-a")
    second = Node(tmp_path, 1, master_port, "--rendezvous-timeout", "60", name="rank1-b")
    try:
        # Refused before any vLLM starts when the leader sees both at check-in; a duplicate that
        # comes after the release stops the group that started: exit 2 naming the rank either way.
        wait_all([leader, first, second], 120)
        for node in (leader, first, second):
            lines = kaito_lines(node)
            assert node.proc.returncode == 2, lines
            assert "rank 1 checked in" in lines
    finally:
        for node in (second, first, leader):
            node.stop()




def test_cutting_the_network_between_two_nodes_ends_both_within_the_peer_timeout(tmp_path):
    """issue 18 item 3: with the link between the leader and the worker cut, every node ends
    (exit 22, naming the other) within the peer timeout plus a few seconds; nothing is left."""
    net = namespaces_or_skip()
    nodes: list[Node] = []
    try:
        master_port = free_port(span=2)
        for rank in (0, 1):
            argv = [*net.prefix(rank), str(KAITO_RUN), "--model", str(TINY_MODEL), "--nnodes", "2",
                    "--node-rank", str(rank), "--leader-address", net.ips[0], "--master-port", str(master_port),
                    "--host", net.ips[rank], "--port", "5000", "--cpu-cores", str(rank), "--grace-period", "5",
                    "--peer-timeout", str(PEER_TIMEOUT), "--max-restarts", "0"]
            nodes.append(Node(tmp_path, rank, master_port, argv=argv, name=f"ns-rank{rank}", port=5000))
        leader, worker = nodes
        wait_ready(leader, worker)
        for node in nodes:
            node.note_processes()
        cut_at = time.monotonic()
        net.cut()
        took = wait_all([leader, worker], PEER_TIMEOUT + 5 + 30)
        print(f"both nodes ended {time.monotonic() - cut_at:.1f} s after the cut (peer timeout {PEER_TIMEOUT} s)")
        assert time.monotonic() - cut_at <= PEER_TIMEOUT + 5 + 5, took  # + the 5 s grace of each vLLM stop
        assert leader.proc.returncode == 22, kaito_lines(leader)
        assert worker.proc.returncode == 22, kaito_lines(worker)
        assert "rank 1's launcher sent no heartbeat" in kaito_lines(leader)
        assert "the leader (rank 0) is gone" in kaito_lines(worker)
        assert leader.left_behind() == [] and worker.left_behind() == []
    finally:
        for node in reversed(nodes):
            node.stop()
        net.remove()

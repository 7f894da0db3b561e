"""entrypoints/kaito/: KAITO's own pod commands, unchanged, through our three scripts.

Every command form KAITO's controller generates (../shared/reference/cluster-conventions.md:
single node with and without the config file and adapters, the multi-node StatefulSet script on
the leader and on a worker, the probes) is run with `/bin/sh -c` exactly as the pod runs it, with
/workspace/vllm/ pointing at entrypoints/kaito/ and `python3` at this interpreter, as a dry run
(KAITO_DRY_RUN=1, KAITO_OUTPUT=json): each gives the expected plan and vLLM command. The flag
mapping itself is unit-tested through inference_api.map_flags.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KAITO = REPO / "entrypoints" / "kaito"

_spec = importlib.util.spec_from_file_location("kaito_inference_api", KAITO / "inference_api.py")
inference_api = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = inference_api  # dataclasses look their module up there
_spec.loader.exec_module(inference_api)

PHI = ("microsoft/Phi-4-mini-instruct", "c0fb9e74abda11b496b7907a9c6c9009a7a0488f")
LLAMA70 = ("meta-llama/Llama-3.3-70B-Instruct", "6f6073b423013f6a7d4d9f39144961bfbfbc386b")
LEADER_DNS = "ws-0.ws-headless.default.svc.cluster.local"


def single_node(repo: tuple[str, str], served: str, tp: int = 1, extra: str = "") -> str:
    """KAITO's single-node command (KAITO main, vLLM runtime)."""
    return (
        f"python3 /workspace/vllm/inference_api.py --model={repo[0]} --code-revision={repo[1]} "
        f"--download-dir=/workspace/weights --tensor-parallel-size={tp} --gpu-memory-utilization=0.84 "
        f"--max-model-len=auto --served-model-name={served} {extra}"
    ).strip()


def multi_node(repo: tuple[str, str], served: str, nodes: int, gpus: int) -> str:
    """KAITO's StatefulSet script for several nodes (Ray leader + workers)."""
    return (
        'if [ "${POD_INDEX}" = "0" ]; then '
        f"/workspace/vllm/multi-node-serving.sh leader --ray_cluster_size={nodes} --ray_port=6379; "
        f"python3 /workspace/vllm/inference_api.py --model={repo[0]} --code-revision={repo[1]} "
        f"--download-dir=/workspace/weights --tensor-parallel-size={gpus} --pipeline-parallel-size={nodes} "
        f"--distributed-executor-backend=ray --gpu-memory-utilization=0.84 --max-model-len=auto "
        f"--served-model-name={served} --kaito-config-file=/mnt/config/inference_config.yaml; "
        f"else /workspace/vllm/multi-node-serving.sh worker --ray_address={LEADER_DNS} --ray_port=6379; fi"
    )


@pytest.fixture
def pod(tmp_path):
    """Runs a pod command: /workspace and /mnt live under tmp_path, python3 is this interpreter."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "python3"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    weights = tmp_path / "workspace" / "weights"
    weights.mkdir(parents=True)
    config = tmp_path / "mnt" / "config" / "inference_config.yaml"
    config.parent.mkdir(parents=True)
    config.write_text("vllm:\n  cpu-offload-gb: 0\nkv_cache_cpu_memory_utilization: 0.5\nmax_probe_steps: 6\n")

    def run(command: str, sku: str, env: dict[str, str] | None = None, adapters: Path | None = None):
        command = (command.replace("/workspace/vllm/", f"{KAITO}/")
                   .replace("/workspace/weights", str(weights))
                   .replace("/mnt/config/", f"{config.parent}/"))
        if adapters is not None:
            command += f" --kaito-adapters-dir={adapters}"
        full_env = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "HOME": str(tmp_path),
            "KAITO_DRY_RUN": "1",
            "KAITO_OUTPUT": "json",
            "KAITO_SKU": sku,
            "KAITO_CHAT_TEMPLATE_DIR": str(tmp_path / "chat_templates"),
            **(env or {}),
        }
        done = subprocess.run(["/bin/sh", "-c", command], env=full_env, capture_output=True, text=True, timeout=120)
        plan = json.loads(done.stdout) if done.returncode == 0 else None
        return done, plan

    run.weights = weights
    run.config = config
    return run


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def make_adapter(root: Path, name: str, rank: int, base: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "base_model_name_or_path": base}))
    (root / name / "adapter_model.safetensors").write_bytes(b"\0")


# -- single node ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_single_node_command_plans_the_preset_with_kaitos_utilization(pod):
    done, plan = pod(single_node(PHI, "phi-4-mini-instruct", extra="--kv-events-config='{\"enable_kv_cache_events\":true}'"),
                     "Standard_NC24ads_A100_v4")
    assert done.returncode == 0, done.stderr
    assert plan["model"]["name"] == "phi-4-mini-instruct"  # the repo at the preset's commit is the preset
    assert plan["plan"]["gpu_memory_utilization"] == 0.84 and plan["plan"]["tensor_parallel_size"] == 1
    memory = plan["plan"]["memory"]  # the fit check's budget is KAITO's 0.84 of the GPU
    assert memory["usable"] == math.ceil(memory["cuda_total"] * 0.84)
    argv = plan["vllm"]["argv"]
    assert flag(argv, "--gpu-memory-utilization") == "0.84"
    assert flag(argv, "--served-model-name") == "phi-4-mini-instruct"
    assert flag(argv, "--max-model-len") not in (None, "auto")  # the plan's context
    assert argv[2].startswith(str(pod.weights))  # --download-dir is the weights folder
    assert '--kv-events-config={"enable_kv_cache_events":true}' in argv  # passed through as written
    assert "--distributed-executor-backend" not in argv and not any(a.startswith("--kaito") for a in argv)
    assert "--enable-lora" not in argv
    assert "--max-model-len=auto: kaito-run's plan sets the context" in done.stderr


@pytest.mark.slow
def test_single_node_with_config_file_and_adapters(pod, tmp_path):
    adapters = tmp_path / "mnt" / "adapter"
    make_adapter(adapters, "sql-helper", 16, PHI[0])
    make_adapter(adapters, "chat-style", 64, PHI[0])
    command = single_node(PHI, "phi-4-mini-instruct",
                          extra="--kaito-config-file=/mnt/config/inference_config.yaml --enable-lora")
    done, plan = pod(command, "Standard_NC24ads_A100_v4", adapters=adapters)
    assert done.returncode == 0, done.stderr
    argv = plan["vllm"]["argv"]
    assert flag(argv, "--cpu-offload-gb") == "0"  # the config file's vllm: section
    assert argv.count("--enable-lora") == 1
    i = argv.index("--lora-modules")
    assert argv[i + 1 : i + 3] == [f"chat-style={adapters / 'chat-style'}", f"sql-helper={adapters / 'sql-helper'}"]
    assert flag(argv, "--max-lora-rank") == "64"
    assert "ignoring max_probe_steps" in done.stderr
    # The file's kv_cache_cpu_memory_utilization: 0.5 turns on vLLM's native CPU KV offload.
    offload = plan["kaito"]["kv_offload"]
    assert offload["size_gib"] > 0 and flag(argv, "--kv-offloading-size") == f"{offload['size_gib']:g}"
    assert "0.5 x" in offload["reason"] and "free" in offload["reason"]
    assert argv.count("--middleware") == 1 and plan["kaito"]["rate_limit"] is True
    assert flag(argv, "--shutdown-timeout") == "25"  # kaito-run's default grace period 30 s


@pytest.mark.slow
def test_kaitos_defaults_offload_guard_and_drain_and_its_switches_off(pod):
    done, plan = pod(single_node(PHI, "phi-4-mini-instruct"), "Standard_NC24ads_A100_v4")
    assert done.returncode == 0, done.stderr
    argv = plan["vllm"]["argv"]
    assert float(flag(argv, "--kv-offloading-size")) == plan["kaito"]["kv_offload"]["size_gib"] > 0  # KAITO's 0.5
    assert flag(argv, "--middleware") == "kaito_runtime.vllm_ext.rate_limit.RateLimitMiddleware"
    off = single_node(PHI, "phi-4-mini-instruct", extra="--kaito-disable-rate-limit --kaito-kv-cache-cpu-memory-utilization=0")
    done, plan = pod(off, "Standard_NC24ads_A100_v4", env={"KAITO_GRACE_PERIOD": "60"})
    assert done.returncode == 0, done.stderr
    argv = plan["vllm"]["argv"]
    assert "--middleware" not in argv and "--kv-offloading-size" not in argv
    assert "0 or unset" in plan["kaito"]["kv_offload"]["reason"] and flag(argv, "--shutdown-timeout") == "55"


@pytest.mark.slow
@pytest.mark.parametrize("role", ["prefill", "decode"])
def test_a_prefill_or_decode_pod_gets_nixl_and_no_offload(pod, role):
    done, plan = pod(single_node(PHI, "phi-4-mini-instruct"), "Standard_NC24ads_A100_v4",
                     env={"KAITO_INFERENCE_ROLE": role, "LOCAL_RANK": "1"})
    assert done.returncode == 0, done.stderr
    argv = plan["vllm"]["argv"]
    assert json.loads(flag(argv, "--kv-transfer-config")) == {
        "kv_connector": "NixlConnector", "kv_role": "kv_both", "kv_load_failure_policy": "fail"}
    assert "--kv-offloading-size" not in argv and f"a {role} pod" in plan["kaito"]["kv_offload"]["reason"]
    assert flag(argv, "--port") == ("5002" if role == "decode" else "5001")  # 5000/5001 + LOCAL_RANK


@pytest.mark.slow
def test_a_config_file_with_a_key_kaito_may_add_later_still_starts(pod):
    pod.config.write_text("vllm:\n  max-num-seqs: 8\nsome_future_kaito_key: {a: 1}\n")
    command = single_node(PHI, "phi-4-mini-instruct", extra="--kaito-config-file=/mnt/config/inference_config.yaml")
    done, plan = pod(command, "Standard_NC24ads_A100_v4")
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("ignoring unknown top-level keys of the config file: some_future_kaito_key") == 1
    assert plan["vllm"]["env"]["KAITO_RATE_LIMIT_MAX_NUM_SEQS"] == "8"


def _fits(preset: str, sku: str, utilization: float | None) -> bool:
    from kaito_runtime import api
    from kaito_runtime.errors import DoesNotFitError

    request = api.RuntimeRequest(preset=preset, sku=sku, dry_run=True,
                                 overrides=api.PlanOverrides(gpu_memory_utilization=utilization))
    try:
        api.prepare(request, {})
    except DoesNotFitError:
        return False
    return True


@pytest.mark.slow
def test_kaitos_utilization_is_what_the_fit_check_judges(pod):
    """A preset that fits at kaito-run's own utilization but not at KAITO's 0.84 (found among the
    presets, so corrected figures do not break the test): the command KAITO generates for it is
    refused before anything is downloaded (exit 2)."""
    from kaito_runtime import api

    skus = ("Standard_NC24ads_A100_v4", "Standard_NC40ads_H100_v5", "Standard_NV36ads_A10_v5")
    marginal = next(((p, sku) for p in api.list_presets() if not p.multi_node for sku in skus
                     if _fits(p.name, sku, None) and not _fits(p.name, sku, 0.84)), None)
    if marginal is None:
        pytest.skip("no preset fits one of these SKUs at the default utilization but not at 0.84")
    spec, sku = marginal
    command = single_node((spec.repo_id, spec.revision), spec.name, tp=1)
    done, _ = pod(command, sku)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not fit" in (done.stdout + done.stderr).lower()
    done, _ = pod(command.replace("--gpu-memory-utilization=0.84", ""), sku)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_a_preset_that_disallows_lora_refuses_mounted_adapters(pod, tmp_path):
    adapters = tmp_path / "mnt" / "adapter"
    make_adapter(adapters, "one", 8, "tiiuae/falcon-7b")
    command = single_node(("tiiuae/falcon-7b", "898df1396f35e447d5fe44e0a3ccaaaa69f30d36"), "falcon-7b")
    done, _ = pod(command, "Standard_NC24ads_A100_v4", adapters=adapters)
    assert done.returncode == 2
    assert "falcon-7b does not allow LoRA adapters" in done.stderr


# -- several nodes (the StatefulSet script) ------------------------------------------------------


@pytest.mark.slow
def test_multi_node_leader_becomes_rank_0_of_an_mp_group_without_ray(pod):
    command = multi_node(LLAMA70, "llama-3.3-70b-instruct", nodes=2, gpus=2)
    started = time.monotonic()
    done, plan = pod(command, "Standard_NC48ads_A100_v4", env={"POD_INDEX": "0", "HOSTNAME": "ws-0"})
    assert done.returncode == 0, done.stderr
    assert "leader: no Ray head to start" in done.stderr
    assert time.monotonic() - started < 60
    topo = plan["topology"]
    assert (topo["nnodes"], topo["node_rank"]) == (2, 0)
    argv = plan["vllm"]["argv"]
    assert flag(argv, "--distributed-executor-backend") == "mp"
    assert (flag(argv, "--tensor-parallel-size"), flag(argv, "--pipeline-parallel-size")) == ("2", "2")
    assert (flag(argv, "--nnodes"), flag(argv, "--node-rank")) == ("2", "0")
    assert flag(argv, "--master-addr") == "ws-0.ws-headless"  # from the StatefulSet host name
    assert "--headless" not in argv and flag(argv, "--gpu-memory-utilization") == "0.84"
    assert flag(argv, "--cpu-offload-gb") == "0"


@pytest.mark.slow
def test_multi_node_worker_becomes_a_headless_kaito_run_worker_of_the_ray_address(pod):
    command = multi_node(LLAMA70, "llama-3.3-70b-instruct", nodes=2, gpus=2)
    env = {"POD_INDEX": "1", "HOSTNAME": "ws-1", "KAITO_PRESET": "llama-3.3-70b-instruct", "KAITO_NNODES": "2",
           "KAITO_GPU_MEMORY_UTILIZATION": "0.84"}
    done, plan = pod(command, "Standard_NC48ads_A100_v4", env=env)
    assert done.returncode == 0, done.stderr
    argv = plan["vllm"]["argv"]
    assert (flag(argv, "--nnodes"), flag(argv, "--node-rank")) == ("2", "1")
    assert flag(argv, "--master-addr") == LEADER_DNS and "--headless" in argv
    assert (flag(argv, "--tensor-parallel-size"), flag(argv, "--pipeline-parallel-size")) == ("2", "2")
    assert "ignoring --ray_port=6379" in done.stderr


@pytest.mark.slow
def test_a_worker_told_no_model_asks_the_leader_and_names_it_when_it_never_answers(pod):
    command = multi_node(LLAMA70, "llama-3.3-70b-instruct", nodes=2, gpus=2).replace(LEADER_DNS, "127.0.0.1")
    done, _ = pod(command, "Standard_NC48ads_A100_v4", env={"POD_INDEX": "1", "KAITO_RENDEZVOUS_TIMEOUT": "2"})
    assert done.returncode == 21, done.stderr
    assert "group store (port 29502) at 127.0.0.1 did not answer" in done.stderr


def test_serving_script_leader_exits_0_and_bad_calls_exit_2():
    script = str(KAITO / "multi-node-serving.sh")
    env = {"PATH": os.environ["PATH"]}
    leader = subprocess.run([script, "leader", "--ray_cluster_size=2", "--ray_port=6379"], env=env, capture_output=True, text=True, timeout=10)
    assert leader.returncode == 0
    assert subprocess.run([script, "worker", "--ray_port=6379"], env=env, capture_output=True, timeout=10).returncode == 2
    assert subprocess.run([script, "head"], env=env, capture_output=True, timeout=10).returncode == 2


# -- the flag mapping ----------------------------------------------------------------------------


def test_each_kaito_flag_is_mapped_or_dropped_with_a_reason():
    args = ["--model=org/m", "--code-revision", "abc", "--download-dir=/w", "--served-model-name=m",
            "--kaito-config-file=/c.yaml", "--kaito-adapters-dir=/a", "--kaito-kv-cache-cpu-memory-utilization=0.5",
            "--kaito-max-probe-steps=6", "--kaito-something-new=1", "--kaito-model-asset-prefetch-timeout", "600",
            "--tensor-parallel-size=4",
            "--gpu-memory-utilization=0.84", "--max-model-len=8192", "--kaito-disable-rate-limit", "--dtype=float16",
            "--enforce-eager"]
    m = inference_api.map_flags(args, {}, exists=lambda path: path == "/a")
    assert m.options == ["--model", "org/m", "--revision", "abc", "--weights-dir", "/w", "--served-model-name", "m",
                         "--config", "/c.yaml", "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.84",
                         "--max-model-len", "8192", "--disable-rate-limit", "--adapters-dir", "/a",
                         "--kv-cache-cpu-memory-utilization", "0.5"]
    assert m.vllm == ["--dtype=float16", "--enforce-eager"]
    assert m.argv()[-3:] == ["--", "--dtype=float16", "--enforce-eager"]
    notes = "\n".join(m.notes)
    assert "--kaito-disable-rate-limit: the 429 guard is off" in notes
    assert "--kaito-max-probe-steps=6: kaito-run plans the context" in notes
    assert "--kaito-model-asset-prefetch-timeout=600: kaito-run's object-store step" in notes  # its value is not a vLLM flag
    assert "--kaito-something-new=1: a KAITO-only flag" in notes


def test_no_model_flag_serves_kaitos_default_folder_unless_the_environment_names_one():
    m = inference_api.map_flags([], {}, exists=lambda path: False)
    assert m.options[:2] == ["--model", "/workspace/vllm/weights"]
    assert "no adapters folder /mnt/adapter" in "\n".join(m.notes)
    assert "--model" not in inference_api.map_flags([], {"KAITO_PRESET": "phi-4"}, exists=lambda p: False).options


def test_the_default_adapters_folder_is_used_when_it_exists():
    m = inference_api.map_flags(["--model=x/y"], {}, exists=lambda path: path == "/mnt/adapter")
    assert m.options[-4:-2] == ["--adapters-dir", "/mnt/adapter"]


def test_a_worker_reads_the_config_file_kaito_mounts_on_every_pod():
    worker = inference_api.map_flags(["--leader-address=ws-0"], {"KAITO_PRESET": "p"}, exists=lambda p: False,
                                     is_file=lambda p: p == "/mnt/config/inference_config.yaml")
    assert worker.options[:4] == ["--leader-address", "ws-0", "--config", "/mnt/config/inference_config.yaml"]
    absent = inference_api.map_flags(["--leader-address=ws-0"], {"KAITO_PRESET": "p"}, exists=lambda p: False,
                                     is_file=lambda p: False)
    assert "--config" not in absent.options
    leader = inference_api.map_flags(["--model=x/y"], {}, exists=lambda p: False, is_file=lambda p: True)
    assert "--config" not in leader.options  # KAITO names the leader's config file itself


def test_ray_backend_makes_the_pipeline_size_the_node_count_and_the_command_model_wins():
    m = inference_api.map_flags(["--model=x/y", "--pipeline-parallel-size=3", "--distributed-executor-backend=ray"],
                                {"KAITO_PRESET": "p", "POD_INDEX": "2"}, exists=lambda p: False)
    assert m.options[m.options.index("--nnodes") + 1] == "3"
    assert "--distributed-executor-backend" not in m.argv()
    assert m.unset_env == ["KAITO_PRESET"]
    other = inference_api.map_flags(["--distributed-executor-backend=mp"], {}, exists=lambda p: False)
    assert other.vllm == ["--distributed-executor-backend=mp"] and "--nnodes" not in other.options


# -- the probes -----------------------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    handler = type("H", (_Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KAITO / "multi-node-health-check.py"), *args],
                          env={"PATH": os.environ["PATH"], **(env or {})}, capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_health_check_answers_both_probes_from_health_endpoints(health_server):
    server, handler = health_server
    port = str(server.server_address[1])
    # KAITO's probe commands, with our port.
    live = probe("liveness", "--leader-address=127.0.0.1", "--ray-port=6379", f"--vllm-port={port}", env={"POD_INDEX": "1"})
    ready = probe("readiness", "--leader-address=127.0.0.1", f"--vllm-port={port}", env={"POD_INDEX": "0"})
    assert (live.returncode, ready.returncode) == (0, 0), live.stdout + ready.stdout
    assert f"127.0.0.1:{port}/health: HTTP 200" in ready.stdout
    handler.status = 503  # vLLM still loading, or a worker whose leader went silent
    live = probe("liveness", "--leader-address=127.0.0.1", f"--vllm-port={port}")
    ready = probe("readiness", "--leader-address=127.0.0.1", f"--vllm-port={port}")
    assert (live.returncode, ready.returncode) == (1, 1)
    assert "HTTP 503" in live.stdout
    # A worker's readiness does not wait on the leader (KAITO's rule, no rolling-update deadlock).
    assert probe("readiness", "--leader-address=127.0.0.1", f"--vllm-port={port}", env={"POD_INDEX": "1"}).returncode == 0


@pytest.mark.slow
def test_health_check_fails_when_nothing_answers():
    done = probe("liveness", "--leader-address=127.0.0.1", "--vllm-port=1", "--timeout=1")
    assert done.returncode == 1 and "no answer" in done.stdout


@pytest.mark.parametrize("where", ["env", "flag"])
@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "0", "1e9", "٣"])
def test_health_check_refuses_a_bad_timeout_in_one_line(where, value):
    """Issue 18 item 14: a bad KAITO_HEALTH_TIMEOUT printed a traceback (a probe's log is all an
    operator sees); now one line names the value and the range, exit 2."""
    args = ["liveness", "--vllm-port=1"]
    done = probe(*args, env={"KAITO_HEALTH_TIMEOUT": value}) if where == "env" else probe(*args, f"--timeout={value}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if value in line]
    assert len(lines) == 1 and "seconds" in lines[0], done.stdout + done.stderr


def test_cpu_kv_offload_is_on_at_kaitos_half_unless_the_flag_says_otherwise():
    default = inference_api.map_flags(["--model=x/y"], {}, exists=lambda p: False)
    assert flag(default.options, "--kv-cache-cpu-memory-utilization") == "0.5"
    off = inference_api.map_flags(["--model=x/y", "--kaito-kv-cache-cpu-memory-utilization=0"], {}, exists=lambda p: False)
    assert flag(off.options, "--kv-cache-cpu-memory-utilization") == "0"
    assert "--disable-rate-limit" not in default.options  # the 429 guard is on by default


@pytest.mark.parametrize(
    ("env", "port"),
    [({}, None), ({"LOCAL_RANK": "2"}, "5002"), ({"KAITO_INFERENCE_ROLE": "decode"}, "5001"),
     ({"KAITO_INFERENCE_ROLE": "decode", "LOCAL_RANK": "1"}, "5002"), ({"KAITO_INFERENCE_ROLE": "prefill"}, None)],
)
def test_the_port_is_5000_plus_local_rank_and_decode_serves_on_5001(env, port):
    m = inference_api.map_flags(["--model=x/y"], env, exists=lambda p: False)
    assert flag(m.options, "--port") == port
    given = inference_api.map_flags(["--model=x/y", "--port=7000"], env, exists=lambda p: False)
    assert given.options.count("--port") == 1 and flag(given.options, "--port") == "7000"  # an explicit port wins


def test_debug_mode_turns_on_debug_logs_for_kaito_run_and_vllm():
    m = inference_api.map_flags(["--model=x/y"], {"DEBUG_MODE": "true"}, exists=lambda p: False)
    assert flag(m.options, "--log-level") == "debug" and m.set_env == {"VLLM_LOGGING_LEVEL": "DEBUG"}
    assert "--log-level" not in inference_api.map_flags(["--model=x/y"], {"DEBUG_MODE": "0"}, exists=lambda p: False).options


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--kaito-kv-cache-cpu-memory-utilization=1.5"], {}, "--kaito-kv-cache-cpu-memory-utilization=1.5: must be a number from 0 to 1"),
        (["--kaito-kv-cache-cpu-memory-utilization=lots"], {}, "must be a number from 0 to 1"),
        ([], {"KAITO_INFERENCE_ROLE": "router"}, "KAITO_INFERENCE_ROLE=router: not a role KAITO has"),
        ([], {"LOCAL_RANK": "one"}, "LOCAL_RANK=one: must be a whole number"),
    ],
)
def test_bad_kaito_input_is_one_line_and_exit_2(tmp_path, args, env, needle):
    done = subprocess.run([sys.executable, str(KAITO / "inference_api.py"), "--model=x/y", *args],
                          env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"inference_api.py: error: {done.stderr.split('error: ', 1)[1].strip()}"]
    assert needle in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["٣", "0", "70000", "http"])
def test_health_check_refuses_a_bad_port_in_one_line(value):
    done = probe("liveness", f"--vllm-port={value}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "port number" in done.stderr

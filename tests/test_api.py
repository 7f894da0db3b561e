"""kaito_runtime.api: the order of the steps, what each step is given, and what run() logs.

vLLM itself is never started here: the API's side effects come through its seam (``api.Effects``,
faked by ``tests/support/api_seam.py``): a "detected" vLLM, a supervisor that records what it
was asked to start, a recording port check; the weights step is the real one unless a test hands
in its own. tests/e2e/test_serve.py runs the real thing. No module attribute is patched here.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kaito_runtime import api
from kaito_runtime import weights
from kaito_runtime.errors import DoesNotFitError, InputError, TopologyError, VllmNotInstalledError, WeightsError
from kaito_runtime.launch.supervisor import SupervisorResult
from kaito_runtime.types import PlanOverrides, WeightsSource
from kaito_runtime.weights.store import write_marker
from tests.support.api_seam import Seam, install_with_sources
from tests.support.weights_helpers import no_writes_under, read_only_volume
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models" / "tiny-llama"
BIG_PRESET = "llama-3.3-70b-instruct"


@pytest.fixture
def seam() -> Seam:
    return Seam()


def tiny_request(tmp_path: Path, **changes) -> api.RuntimeRequest:
    fields = {"model": str(TINY), "assume_gpus": "1xA100-80GB", "weights_dir": tmp_path / "w", "port": 5000}
    fields.update(changes)
    return api.RuntimeRequest(**fields)


def reused(path: Path, revision: str | None = None):
    """A weights step that finds a complete copy at ``path``."""
    result = weights.WeightsResult(path=path, downloaded_bytes=0, reused=True, seconds=0.0, files=1, revision=revision)
    return lambda source, **kwargs: result


def must_not_fetch(why: str):
    def fail(source, **kwargs):
        raise AssertionError(why)

    return fail


# --- the weights folder check ------------------------------------------------------------------


def test_run_checks_the_weights_folder_before_anything_slow(hub, hub_env, tmp_path, seam):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for download_only in (False, True):
        with pytest.raises(InputError, match="cannot be used"):
            api.run(api.RuntimeRequest(model="org/tiny", endpoint=hub.url, weights_dir=afile / "w"), {},
                    download_only=download_only, effects=seam.effects)
    assert hub.records == []  # the model was not resolved
    assert "weights" not in seam.kinds() and "supervise" not in seam.kinds()


def test_a_local_model_folder_does_not_need_the_weights_folder(tmp_path, seam):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert api.run(tiny_request(tmp_path, weights_dir=afile / "w"), {}, effects=seam.effects) == 0


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_read_only_volume_with_a_complete_copy_is_served(tiny_hub, tmp_path, seam, offline):
    """An init container filled the volume; the serving container mounts it read-only."""
    wdir = tmp_path / "w"
    env = dict(os.environ)
    fill = api.RuntimeRequest(model="org/tiny-llama", endpoint=tiny_hub.url, weights_dir=wdir)
    filled = api.download_weights(fill, env)
    with read_only_volume(wdir):
        serve = api.RuntimeRequest(model="org/tiny-llama", endpoint=tiny_hub.url, weights_dir=wdir,
                                   assume_gpus="1xA100-80GB", offline=offline)
        assert api.run(serve, env, effects=seam.effects) == 0
        assert str(filled.path) in seam[0]["argv"]
        # The download command exists to write: there the read-only volume is refused up front.
        with pytest.raises(InputError, match="not writable"):
            api.run(fill, env, download_only=True, effects=seam.effects)


def test_os_errors_in_the_weights_step_become_a_weights_error(tmp_path, seam):
    def broken(source, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "w" / "org--x"))

    seam.weights = broken
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    with pytest.raises(WeightsError) as caught:
        api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path / "w"), {}, effects=seam.effects)
    assert caught.value.exit_code == 10
    assert "Permission denied" in caught.value.message and "org--x" in caught.value.message


# --- --download-only ---------------------------------------------------------------------------


def test_download_only_skips_probing_and_planning(tmp_path, seam, caplog):
    """An init container has no GPU: the 70B preset must still be fetched, not refused. The
    request below is one a plan refuses (too small a SKU) and a topology step refuses (two
    nodes, no rank): the download must do neither."""
    seam.weights = reused(tmp_path / "w" / "x")
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NV36ads_A10_v5", nnodes=2,
                                 weights_dir=tmp_path / "w", verify_weights=True)
    assert api.run(request, {}, download_only=True, effects=seam.effects) == 0
    assert [source.name for source, _ in seam.fetched] == [BIG_PRESET]
    assert seam.fetched[0][1]["verify"] is True and seam.fetched[0][1]["weights_dir"] == tmp_path / "w"
    assert seam.kinds() == ["weights"]  # no vLLM detection, no port check either
    assert "not checked" in caplog.text


def test_without_download_only_the_big_preset_is_refused_on_this_cpu_inventory(tmp_path, seam):
    seam.weights = must_not_fetch("fetched before the plan")
    with pytest.raises(DoesNotFitError):
        api.run(api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NV36ads_A10_v5", weights_dir=tmp_path / "w"), {},
                effects=seam.effects)


def test_download_only_does_not_need_the_kv_figures_of_config_json(hub, hub_env, tmp_path, caplog):
    """org/tiny's config.json has no attention heads: planning must refuse it, a download must not."""
    import os

    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = api.RuntimeRequest(model="org/tiny", endpoint=hub.url, weights_dir=tmp_path / "w")
    with pytest.raises(InputError, match="num_attention_heads|head"):
        api.resolve_model(request, {})
    result = api.download_weights(request, dict(os.environ))
    assert result.revision == hub.commit_of("org/tiny")
    assert (result.path / "model.safetensors").is_file() and (result.path / "config.json").is_file()
    assert hub.commit_of("org/tiny") in caplog.text  # the resolved commit is named


def test_download_only_still_checks_the_repo_id_form(tmp_path, seam):
    seam.weights = must_not_fetch("fetched a malformed id")
    with pytest.raises(InputError, match="org/name"):
        api.download_weights(api.RuntimeRequest(model="not-a-repo-id", weights_dir=tmp_path / "w"), {}, effects=seam.effects)
    assert seam.events == []


def test_verify_weights_reaches_ensure_weights(tmp_path, seam):
    seam.weights = reused(tmp_path)
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path), {}, effects=seam.effects)
    api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path, verify_weights=True), {}, effects=seam.effects)
    assert [kwargs["verify"] for _, kwargs in seam.fetched] == [False, True]


# --- planning only vs a real launch (multi-node) -----------------------------------------------


def test_a_dry_run_plans_two_nodes_without_rank_or_leader():
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NC48ads_A100_v4", nnodes=2, dry_run=True)
    prepared = api.prepare(request, {})
    assert (prepared.plan.tensor_parallel_size, prepared.plan.pipeline_parallel_size) == (2, 2)
    assert prepared.topology.node_rank == 0


def test_a_real_launch_needs_the_rank(tmp_path, seam):
    seam.weights = must_not_fetch("fetched without a rank")
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NC48ads_A100_v4", nnodes=2, weights_dir=tmp_path)
    with pytest.raises(TopologyError):
        api.prepare(request, {}, planning_only=False)
    with pytest.raises(TopologyError):
        api.run(request, {}, effects=seam.effects)


# --- run(): readiness, the ready line, failures ------------------------------------------------


def test_readiness_polls_what_the_pass_through_arguments_chose(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = tiny_request(tmp_path, extra_vllm_args=("--port", "8001", "--served-model-name", "foo", "bar"))
    assert api.run(request, {}, effects=seam.effects) == 0
    ready = seam[0]["ready"]
    assert ready.port == 8001
    assert "foo" in (ready.served_name if isinstance(ready.served_name, tuple) else (ready.served_name,))
    assert "serving foo on http://0.0.0.0:8001/v1" in caplog.text


def test_the_ready_line_counts_from_the_start_of_run_including_the_model_phase(tiny_hub, tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    tiny_hub.answer_delay_s = 0.2  # a slow hub: the model phase makes two round trips or more
    seam.weights = reused(tmp_path / "m")
    request = tiny_request(tmp_path, model="org/tiny-llama", endpoint=tiny_hub.url)
    api.run(request, {}, effects=seam.effects)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ready in"))
    total = float(line.split()[2])
    model_phase = float(line.split("(model ")[1].split()[0])
    assert model_phase >= 0.4
    vllm_start = float(line.split("vLLM start ")[1].split()[0])
    assert vllm_start == 1.5
    # counted from the start of run(), model resolution included (the total is shown to 0.1 s)
    assert total + 0.05 >= model_phase


def test_failure_context_gets_the_effective_port(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    seam.result = SupervisorResult(exit_code=1, ready_after=None, tail=("OSError: [Errno 98] Address already in use",),
                                   signal_received=None)
    assert api.run(tiny_request(tmp_path, extra_vllm_args=("--port", "5001")), {}, effects=seam.effects) == 1
    assert "port 5001 is already in use" in _error_text(caplog)


def _error_text(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


@pytest.mark.parametrize(
    "tail, closing",
    [
        # Unrecognised: the last lines, then a closing line.
        (("loading", "ValueError: the frobnicator is unsupported"), "cause is in its last lines"),
        # Only the generic engine failure matched: the real cause is above it, so show the lines.
        (("ValueError: the frobnicator is unsupported", "RuntimeError: Engine core initialization failed."),
         "engine core did not start"),
    ],
)
def test_unknown_and_generic_failures_repeat_vllms_last_lines(tmp_path, seam, caplog, tail, closing):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    seam.result = SupervisorResult(exit_code=3, ready_after=None, tail=tail, signal_received=None)
    assert api.run(tiny_request(tmp_path), {}, effects=seam.effects) == 3
    text = _error_text(caplog)
    assert "its last lines" in text
    assert text.index("the frobnicator is unsupported") < text.index(closing)
    assert text.rstrip().splitlines()[-1].find(closing) >= 0


def test_a_recognised_failure_is_one_line_without_the_tail(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    tail = ("loading weights", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    seam.result = SupervisorResult(exit_code=1, ready_after=None, tail=tail, signal_received=None)
    api.run(tiny_request(tmp_path), {}, effects=seam.effects)
    text = _error_text(caplog)
    assert text and "its last lines" not in text and "loading weights" not in text
    assert len(text.splitlines()) == 1


def test_missing_vllm_names_this_interpreter(tmp_path, seam):
    import sys

    seam.install = None
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(tiny_request(tmp_path), {}, effects=seam.effects)
    assert sys.executable in caught.value.message


def test_missing_vllm_is_found_before_any_download(tmp_path, seam):
    seam.install = None
    request = api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(request, {}, effects=seam.effects)
    assert caught.value.exit_code == 20
    assert seam.kinds() == ["detect"]


def test_a_vllm_too_old_for_several_nodes_is_found_before_any_download(tmp_path, seam):
    seam.install = install_with_sources(tmp_path / "vllm", parallel="class ParallelConfig:\n    tensor_parallel_size: int\n")
    with pytest.raises(VllmNotInstalledError, match="across nodes"):
        api.run(_multi_node_request(tmp_path, rank=0, port=29555), {}, effects=seam.effects)
    assert "weights" not in seam.kinds()


def test_the_architecture_warning_comes_before_the_download(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    seam.install = install_with_sources(tmp_path / "vllm", registry='_MODELS = {"OtherForCausalLM": ("other", "Other")}\n')
    seen = []

    def fake_ensure(source, **kwargs):
        seen.append("does not list architecture" in caplog.text)
        return reused(tmp_path / "m")(source)

    seam.weights = fake_ensure
    request = api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    assert api.run(request, {}, effects=seam.effects) == 0
    assert seen == [True]


def test_run_detects_vllm_once_and_reads_the_config_file_once(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    config = tmp_path / "kaito.yaml"
    config.write_text("max_probe_steps: 6\nvllm:\n  max-num-seqs: 7\n")
    assert api.run(tiny_request(tmp_path, config_file=config), {}, effects=seam.effects) == 0
    assert seam.kinds().count("detect") == 1
    assert caplog.text.count("ignoring max_probe_steps") == 1
    argv = seam[0]["argv"]
    assert argv[argv.index("--max-num-seqs") + 1] == "7"
    caplog.clear()
    api.dry_run(tiny_request(tmp_path, config_file=config, dry_run=True), {}, effects=seam.effects)
    assert caplog.text.count("ignoring max_probe_steps") == 1


def test_the_start_line_shows_the_variables_we_set_not_the_inherited_ones(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    assert api.run(tiny_request(tmp_path), {"MY_INHERITED_SETTING": "abc123"}, effects=seam.effects) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM"))
    assert "HF_HUB_OFFLINE=1" in line and "VLLM_NO_USAGE_STATS=1" in line
    assert "MY_INHERITED_SETTING" not in line and "abc123" not in line
    assert seam[0]["env"]["MY_INHERITED_SETTING"] == "abc123"  # still inherited by the child
    assert line.index("HF_HUB_OFFLINE=1") < line.index(str(TINY))


def test_failure_hints_use_what_vllm_really_ran(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    seam.result = SupervisorResult(exit_code=1, ready_after=None, tail=("ValueError: No available memory for the cache blocks.",),
                                   signal_received=None)
    args = ("--gpu-memory-utilization", "0.6", "--tensor-parallel-size", "1")
    assert api.run(tiny_request(tmp_path, extra_vllm_args=args), {}, effects=seam.effects) == 1
    assert "raise --gpu-memory-utilization above 0.6" in _error_text(caplog)


def test_a_ready_timeout_is_reported_as_ours_not_as_a_vllm_exit(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    seam.result = SupervisorResult(
        exit_code=124, ready_after=None, tail=("still loading",), signal_received=None, outcome="ready_timeout"
    )
    assert api.run(tiny_request(tmp_path, ready_timeout=5.0), {}, effects=seam.effects) == 124
    text = _error_text(caplog)
    assert "not ready within" in text and "5 s" in text and "still loading" in text
    assert "exited with code 124" not in text


def test_an_api_key_reaches_the_readiness_check_and_is_masked(tmp_path, seam):
    from kaito_runtime import secrets

    key = "sk-readiness-key-0123456789"
    assert api.run(tiny_request(tmp_path, extra_vllm_args=("--api-key", key)), {}, effects=seam.effects) == 0
    assert seam[0]["ready"].api_key == key
    assert key not in secrets.redact(f"starting vLLM: --api-key {key}")


def test_phase_times_line_names_every_phase():
    line = api.PhaseTimes(model=0.5, inventory=0.1, plan=0.2, weights=3.0, vllm_start=9.0).line()
    for phase in ("model 0.50 s", "inventory 0.10 s", "plan 0.20 s", "weights 3.00 s", "vLLM start 9.0 s"):
        assert phase in line


# --- multi-node: the group meets before vLLM starts ----------------------------------------------


def _multi_node_request(tmp_path: Path, rank: int, port: int) -> api.RuntimeRequest:
    return api.RuntimeRequest(
        preset="llama-3.1-8b-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w",
        nnodes=2, node_rank=rank, leader_address="localhost", master_port=port, rendezvous_timeout=10,
        host="127.0.0.1", port=free_port(),
    )


def _stopped_by_sigterm(seam: Seam) -> None:
    """Each node's (fake) vLLM ends as when Kubernetes stops the pods: a forwarded SIGTERM."""
    seam.result = SupervisorResult(exit_code=0, ready_after=1.5, tail=(), signal_received=signal.SIGTERM, outcome="stopped")


def _run_in_thread(request: api.RuntimeRequest, seam: Seam) -> tuple[threading.Thread, list]:
    """api.run for another node of the group, in this process (its own rank, the same store)."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(api.run(request, {}, effects=seam.effects))
        except Exception as exc:  # the test asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def fetched(tmp_path, seam):
    seam.weights = reused(tmp_path / "model")
    return seam


def test_leader_resolves_its_address_and_tells_vllm(tmp_path, seam, fetched, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    _stopped_by_sigterm(seam)
    master_port = free_port(span=2)
    worker, worker_outcome = _run_in_thread(_multi_node_request(tmp_path, rank=1, port=master_port), seam)
    request = replace(_multi_node_request(tmp_path, rank=0, port=master_port), ready_timeout=5.0)
    assert api.run(request, {}, effects=seam.effects) == 0
    worker.join(20)
    leader_call = next(call for call in seam.calls if "--headless" not in call["argv"])
    argv, env = leader_call["argv"], leader_call["env"]
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"  # "localhost", resolved
    assert argv[argv.index("--node-rank") + 1] == "0"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert leader_call["ready"] is not None  # the leader serves HTTP
    assert leader_call["ready_timeout"] == 5.0
    # One owner of the child's address variables: the rendezvous, shown on the start line.
    _, built = api.dry_run(replace(request, dry_run=True), {}, effects=seam.effects)
    assert "VLLM_HOST_IP" not in built.env
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM"))
    assert "VLLM_HOST_IP=127.0.0.1" in line
    assert "group released: all 2 nodes checked in and agree" in caplog.text


def test_worker_waits_for_the_leaders_store_then_starts_headless(tmp_path, seam, fetched):
    _stopped_by_sigterm(seam)
    master_port = free_port(span=2)
    worker, worker_outcome = _run_in_thread(replace(_multi_node_request(tmp_path, rank=1, port=master_port), ready_timeout=5.0), seam)
    time.sleep(2.0)  # the worker starts first and waits for the leader's store
    assert not seam.calls
    assert api.run(_multi_node_request(tmp_path, rank=0, port=master_port), {}, effects=seam.effects) == 0
    worker.join(20)
    assert worker_outcome, "the worker did not finish"
    assert worker_outcome == [0]
    call = next(call for call in seam.calls if "--headless" in call["argv"])
    argv, env = call["argv"], call["env"]
    assert argv[argv.index("--master-port") + 1] == str(master_port)
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert call["ready"] is None  # a headless worker has no HTTP server to probe
    # ...so KAITO_READY_TIMEOUT (the same env on every pod) must not stop it.
    assert call["ready_timeout"] is None


@pytest.mark.slow
def test_worker_gives_up_when_the_leader_never_opens_its_store(tmp_path, seam, fetched):
    from kaito_runtime.errors import RendezvousTimeoutError

    port = free_port(span=2)  # nobody listens there
    request = replace(_multi_node_request(tmp_path, rank=1, port=port), rendezvous_timeout=1.5)
    with pytest.raises(RendezvousTimeoutError) as caught:
        api.run(request, {}, effects=seam.effects)
    assert caught.value.exit_code == 21
    assert str(port + 1) in str(caught.value) and "--rendezvous-timeout" in str(caught.value)
    assert not seam.calls


# --- a weights folder that cannot be created ---------------------------------------------------


@pytest.mark.parametrize("download_only", [False, True], ids=["serve", "download-only"])
def test_a_weights_folder_that_cannot_be_created_is_refused_before_the_model(hub, hub_env, tmp_path, seam, download_only):
    """/proc/x as a test: the kernel refuses to create the folder (root ignores permission bits)."""
    import errno

    target = tmp_path / "proc" / "x"
    request = api.RuntimeRequest(model="org/tiny", endpoint=hub.url, weights_dir=target)
    with no_writes_under(tmp_path / "proc", errno.EPERM), pytest.raises(InputError) as caught:
        api.run(request, {}, download_only=download_only, effects=seam.effects)
    message = caught.value.message
    assert caught.value.exit_code == 2
    assert f"The weights folder {target} cannot be created" in message and "Operation not permitted" in message
    assert "--weights-dir" in message and "KAITO_WEIGHTS_DIR" in message
    assert hub.records == [] and "weights" not in seam.kinds()  # the model was not resolved, nothing fetched


def test_run_makes_the_weights_folder_before_planning(tmp_path, seam):
    """Made before the plan: a plan that refuses the model leaves the folder made."""
    target = tmp_path / "new" / "weights"
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NV36ads_A10_v5", weights_dir=target)
    with pytest.raises(DoesNotFitError):
        api.run(request, {}, effects=seam.effects)
    assert target.is_dir()


def test_a_dry_run_creates_no_weights_folder(tmp_path):
    target = tmp_path / "not-yet"
    api.dry_run(api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=target,
                                   dry_run=True), {})
    assert not target.exists()


# --- which host a plan is sized against --------------------------------------------------------


def test_assumed_gpus_use_this_machines_host_and_a_sku_its_own(tmp_path):
    from kaito_runtime.node.inventory import probe_host

    here = probe_host(tmp_path)
    node, _ = api.doctor(api.RuntimeRequest(assume_gpus="1xH100", weights_dir=tmp_path), {})
    assert (node.host.cpu_count, node.host.ram_total_bytes) == (here.cpu_count, here.ram_total_bytes)
    assert node.host.disk_free_bytes is not None  # the disk of the weights folder was read
    sku, _ = api.doctor(api.RuntimeRequest(sku="Standard_NC24ads_A100_v4", weights_dir=tmp_path), {})
    assert sku.host.cpu_count == 24 and sku.host.ram_total_bytes > 0


def test_cpu_with_assumed_gpus_plans_against_this_machines_ram():
    from kaito_runtime.node.inventory import probe_host
    from kaito_runtime.types import GiB

    request = api.RuntimeRequest(
        preset=BIG_PRESET, assume_gpus="1xH100", overrides=PlanOverrides(force_cpu=True), dry_run=True
    )
    with pytest.raises(DoesNotFitError) as caught:
        api.dry_run(request, {})
    found = re.search(r"([\d.]+) GiB RAM is available", caught.value.message)
    assert found, caught.value.message
    assert abs(float(found.group(1)) - probe_host().ram_available_bytes / GiB) < 2.0


# --- a model that does not fit ------------------------------------------------------------------


NVML_RECORDINGS = Path(__file__).parent / "data" / "nvml"


def recorded_node(name: str) -> dict[str, str]:
    """The environment that makes the API probe a recorded machine (tests/data/nvml) through the
    same NVML seam a real node uses, instead of replacing the probe."""
    return {"KAITO_NVML_RECORDING": str(NVML_RECORDINGS / f"{name}.json")}


def test_not_fitting_without_gpus_carries_the_model_and_suggests_planning_for_a_gpu_node():
    with pytest.raises(api.ModelDoesNotFitError) as caught:
        api.dry_run(api.RuntimeRequest(preset=BIG_PRESET, dry_run=True), recorded_node("zero-gpus"))
    error = caught.value
    assert error.exit_code == 2 and error.model.name == BIG_PRESET
    assert "does not fit in this machine's RAM" in error.message
    assert "plan for a GPU node with --sku SKU or --assume-gpus" in error.message
    # A gated preset and no token: said before anything is fetched.
    assert error.token_source is None and error.warnings and "is gated" in error.warnings[0]


def test_the_same_preset_is_planned_on_a_recorded_node_with_enough_gpus():
    # The accepted twin of the refusal above: the refusal comes from the node, not the preset.
    prepared, _ = api.dry_run(api.RuntimeRequest(preset=BIG_PRESET, dry_run=True), recorded_node("h100-sxm-8x"))
    assert prepared.model.name == BIG_PRESET
    assert prepared.inventory.gpu_count == 8 and prepared.plan.gpus_per_node == 8
    assert prepared.plan.tensor_parallel_size >= 2


def test_the_gpu_node_hint_is_left_out_when_a_node_was_named_or_cpu_forced():
    forced = api.RuntimeRequest(preset=BIG_PRESET, overrides=PlanOverrides(force_cpu=True), dry_run=True)
    sku = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NC24ads_A100_v4", dry_run=True)
    for request in (forced, sku):
        with pytest.raises(api.ModelDoesNotFitError) as caught:
            api.dry_run(request, recorded_node("zero-gpus"))
        assert "--assume-gpus 4x" not in caught.value.message


# --- what vLLM will really get ------------------------------------------------------------------


def test_the_plan_line_shows_the_effective_values_and_marks_overrides(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    config = tmp_path / "kaito.yaml"
    config.write_text("vllm:\n  gpu-memory-utilization: 0.5\n")
    request = tiny_request(tmp_path, config_file=config, extra_vllm_args=("--max-model-len", "128"))
    assert api.run(request, {}, effects=seam.effects) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "plan: tiny-llama on GPU, TP 1 x PP 1, max-model-len 128" in messages
    assert "  override: --max-model-len 128 (from pass-through; the plan said 512)" in messages
    assert any(m.startswith("  override: --gpu-memory-utilization 0.50 (from --config; the plan said 0.") for m in messages)
    assert not any("override: --tensor-parallel-size" in m for m in messages)


# --- the port ------------------------------------------------------------------------------------


def test_run_checks_the_port_vllm_will_use_before_the_weights(tmp_path, seam):
    seam.weights = reused(tmp_path / "m")
    request = tiny_request(tmp_path, weights_dir=tmp_path / "w", extra_vllm_args=("--port", "6123"))
    request = replace(request, model=None, preset="phi-4-mini-instruct")
    assert api.run(request, {}, effects=seam.effects) == 0
    # Checked (and held by the launcher's own HTTP) as soon as the pass-through names it, and
    # again once the command is built (the config file could have moved it): before the weights.
    assert seam.kinds() == ["detect", "port", "port", "weights", "supervise"]
    assert seam.port_checks == [("0.0.0.0", 6123), ("0.0.0.0", 6123)]


def test_a_port_in_use_is_refused_before_the_weights(tmp_path, seam):
    seam.real_port_check = True
    seam.weights = must_not_fetch("the weights step ran")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError) as caught:
            api.run(tiny_request(tmp_path, host="127.0.0.1", port=port), {}, effects=seam.effects)
    assert caught.value.exit_code == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in caught.value.message
    assert "--port (KAITO_PORT)" in caught.value.message
    assert not seam.calls


def test_a_worker_checks_the_http_port_its_health_endpoint_uses(tmp_path, seam, fetched):
    """A headless worker serves no API, but its launcher answers /health on that port."""
    _stopped_by_sigterm(seam)
    master_port = free_port(span=2)
    request = _multi_node_request(tmp_path, rank=1, port=master_port)
    worker, _ = _run_in_thread(request, seam)
    leader = _multi_node_request(tmp_path, rank=0, port=master_port)
    assert api.run(leader, {}, effects=seam.effects) == 0
    worker.join(20)
    assert ("127.0.0.1", request.port) in seam.port_checks


# --- gated models without a token ---------------------------------------------------------------


GATED = "llama-3.1-8b-instruct"


def test_a_gated_preset_without_a_token_is_warned_about_before_the_weights(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    warned = []

    def fake_ensure(source, **kwargs):
        warned.append("is gated: a Hugging Face token with access is needed" in caplog.text)
        return reused(tmp_path / "m")(source)

    seam.weights = fake_ensure
    request = api.RuntimeRequest(preset=GATED, assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    assert api.run(request, {"HF_HOME": str(tmp_path / "hf")}, effects=seam.effects) == 0
    assert warned == [True]


def test_the_gated_warning_is_not_given_with_a_token_or_a_complete_copy(tmp_path):
    from kaito_runtime.hub import RemoteFile

    request = api.RuntimeRequest(preset=GATED, assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w", dry_run=True)
    env = {"HF_HOME": str(tmp_path / "hf")}
    prepared, _ = api.dry_run(request, env)
    assert len(prepared.warnings) == 1 and "none found" in prepared.warnings[0]
    secret = "hf_dryRunSecret0123456789"
    prepared, _ = api.dry_run(request, {**env, "HF_TOKEN": secret})
    assert prepared.warnings == ()
    folder = prepared.model_path
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    model = prepared.model
    write_marker(folder, model.repo_id, model.revision, "safetensors", [RemoteFile("config.json", 2)])
    prepared, _ = api.dry_run(request, env)
    assert prepared.warnings == ()


def test_a_local_model_folder_has_no_gated_warning(tmp_path):
    prepared, _ = api.dry_run(tiny_request(tmp_path, dry_run=True), {})
    assert prepared.warnings == ()


# --- one form for the weights line ------------------------------------------------------------


def test_the_weights_line_has_one_form_in_every_mode(tmp_path, seam, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    folder = tmp_path / "w" / "org--m" / ("c" * 40)
    seam.weights = reused(folder, revision="c" * 40)
    api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", weights_dir=tmp_path / "w"), {}, download_only=True,
            effects=seam.effects)
    api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w"), {},
            effects=seam.effects)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("weights ready")]
    assert len(lines) == 2
    for line in lines:
        assert line.startswith(f"weights ready at {folder} (") and line.endswith(" s)") and line.count("c" * 40) == 1


def test_the_hub_endpoint_and_timeout_come_from_the_env_the_api_is_given(tiny_hub, tmp_path, monkeypatch):
    """HF_ENDPOINT / KAITO_HUB_TIMEOUT in the mapping passed to the API win; os.environ is not read."""
    from kaito_runtime.errors import HubUnreachableError, InputError

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port: must not be used
    monkeypatch.delenv("KAITO_HUB_TIMEOUT", raising=False)
    request = api.RuntimeRequest(model="org/tiny-llama", weights_dir=tmp_path / "w", dry_run=True, assume_gpus="1xH100")
    prepared = api.prepare(request, {"HF_ENDPOINT": tiny_hub.url})
    assert prepared.model.revision == tiny_hub.commit_of("org/tiny-llama")
    with pytest.raises(InputError, match="KAITO_HUB_TIMEOUT"):  # the given env's bad value is the one refused
        api.prepare(request, {"HF_ENDPOINT": tiny_hub.url, "KAITO_HUB_TIMEOUT": "soon"})
    with pytest.raises(HubUnreachableError) as info:
        api.prepare(request, {"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert "huggingface.co" not in str(info.value) and "127.0.0.1:9" in str(info.value)


def test_download_only_hands_the_weights_step_only_what_it_needs(hub, hub_env, tmp_path, seam):
    """No made-up model figures: a repo id becomes repo, revision and load format, nothing else."""
    request = api.RuntimeRequest(model="org/tiny", revision="main", endpoint=hub.url, weights_dir=tmp_path / "w")
    api.download_weights(request, {}, effects=seam.effects)  # the real weights step, through the seam
    given = [source for source, _ in seam.fetched]
    assert given == [WeightsSource(name="tiny", repo_id="org/tiny", revision="main")]
    assert not hasattr(given[0], "attention") and not hasattr(given[0], "weights_bytes")


def test_a_join_worker_learns_the_model_and_settings_from_the_leader(tmp_path, seam, fetched):
    _stopped_by_sigterm(seam)
    master_port = free_port(span=2)
    leader = replace(_multi_node_request(tmp_path, rank=0, port=master_port), extra_vllm_args=("--max-num-seqs", "7"),
                     overrides=api.PlanOverrides(max_model_len=4096))
    joiner = api.RuntimeRequest(join=True, node_rank=1, leader_address="localhost", master_port=master_port,
                                assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w", rendezvous_timeout=10,
                                host="127.0.0.1", port=free_port())
    worker, outcome = _run_in_thread(joiner, seam)
    assert api.run(leader, {}, effects=seam.effects) == 0
    worker.join(20)
    assert outcome == [0]
    calls = {("worker" if "--headless" in c["argv"] else "leader"): c["argv"] for c in seam.calls}
    for argv in calls.values():
        assert argv[argv.index("--max-model-len") + 1] == "4096"
        assert argv[argv.index("--max-num-seqs") + 1] == "7"
        assert argv[argv.index("--nnodes") + 1] == "2"
    assert calls["worker"][calls["worker"].index("--node-rank") + 1] == "1"


def test_join_refuses_a_model_of_its_own_and_needs_a_leader(tmp_path, seam):
    with pytest.raises(InputError) as caught:
        api.run(api.RuntimeRequest(join=True, preset="phi-4-mini-instruct", weights_dir=tmp_path), {}, effects=seam.effects)
    assert "--join learns the model" in caught.value.message
    with pytest.raises(InputError) as caught:
        api.run(api.RuntimeRequest(join=True, weights_dir=tmp_path), {}, effects=seam.effects)
    assert "--join needs the leader's address" in caught.value.message


def test_the_plan_budgets_the_batch_and_cuda_graphs_vllm_gets_from_the_pass_through_flags(tmp_path):
    # vLLM's non-KV memory follows --max-num-batched-tokens / --max-num-seqs and --enforce-eager:
    # the planner (vllm_budget) must see the values vLLM will get, not the GPU class's defaults.
    base = dict(preset="llama-3.1-8b-instruct", assume_gpus="1xH100-80GB", weights_dir=tmp_path / "w", dry_run=True)
    default = api.prepare(api.RuntimeRequest(**base), {}).plan
    passed = api.prepare(api.RuntimeRequest(**base, extra_vllm_args=(
        "--enforce-eager", "--max-num-batched-tokens", "2048", "--max-num-seqs", "64")), {}).plan
    assert default.memory.cudagraph > 0 and passed.memory.cudagraph == 0
    assert passed.memory.activation < default.memory.activation
    assert passed.kv_cache_tokens > default.kv_cache_tokens
    config = tmp_path / "kaito.yaml"
    config.write_text("vllm:\n  enforce-eager: true\n")
    assert api.prepare(api.RuntimeRequest(**base, config_file=config), {}).plan.memory.cudagraph == 0


def test_join_without_vllm_exits_20_before_contacting_the_store(tmp_path, seam):
    """Issue 18 item 12: `--join` on an install without vLLM crashed with "No module named torch"
    (exit 1) while contacting the leader's store; the install is checked first (exit 20). Nobody
    listens at the leader's address: contacting it would end in a rendezvous error instead."""
    seam.install = None
    request = api.RuntimeRequest(join=True, node_rank=1, leader_address="127.0.0.1", master_port=free_port(span=2),
                                 weights_dir=tmp_path / "w", rendezvous_timeout=5)
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(request, {}, effects=seam.effects)
    assert caught.value.exit_code == 20  # a store contacted first would end in a rendezvous error instead
    assert seam.kinds() == ["detect"]


def test_errors_carry_the_repo_and_the_path_as_fields(hub, hub_env, tmp_path, seam):
    """A caller branches on what failed without parsing the message."""
    from kaito_runtime.errors import RepoNotFoundError

    with pytest.raises(RepoNotFoundError) as missing:
        api.download_weights(api.RuntimeRequest(model="org/no-such-model", endpoint=hub.url, weights_dir=tmp_path / "w"),
                             {}, effects=seam.effects)
    assert missing.value.repo_id == "org/no-such-model"

    def broken(source, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "w" / "org--x"))

    seam.weights = broken
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    with pytest.raises(WeightsError) as denied:
        api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path / "w"), {}, effects=seam.effects)
    assert str(denied.value.path) == str(tmp_path / "w" / "org--x")

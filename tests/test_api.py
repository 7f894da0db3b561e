"""kaito_runtime.api: the order of the steps, what each step is given, and what run() logs.

vLLM itself is never started here: ``supervisor.supervise`` is replaced by a stub that records
what it was asked to do (tests/test_e2e_serve.py runs the real thing).
"""

from __future__ import annotations

import logging
import threading
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kaito_runtime import api

from kaito_runtime.node import inventory

import kaito_runtime.plan as planner

from kaito_runtime.launch import ports

from kaito_runtime.launch import supervisor

from kaito_runtime.launch import vllm_install

from kaito_runtime import weights

from kaito_runtime.weights import store as weights_store
from kaito_runtime.errors import DoesNotFitError, InputError, TopologyError, VllmNotInstalledError, WeightsError
from kaito_runtime.launch.supervisor import SupervisorResult
from kaito_runtime.types import PlanOverrides

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "models" / "tiny-llama"
BIG_PRESET = "llama-3.3-70b-instruct"
FAKE_INSTALL = vllm_install.VllmInstall(
    version="0.32.0", cpu_build=False, entrypoint=("vllm", "serve"), model_as_flag=False
)


class FakeSupervisor:
    """Records each supervise() call; reports ready after 1.5 s, then returns ``result``."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.result = SupervisorResult(exit_code=0, ready_after=1.5, tail=(), signal_received=None)

    def __call__(self, argv, env, **kwargs) -> SupervisorResult:
        self.calls.append({"argv": tuple(argv), "env": dict(env), **kwargs})
        if self.result.exit_code == 0 and kwargs.get("on_ready"):
            kwargs["on_ready"](1.5)
        return self.result

    def __getitem__(self, index: int) -> dict:
        return self.calls[index]


REAL_PORT_CHECK = ports.check_port_free


@pytest.fixture(autouse=True)
def port_checks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Records the port checks instead of binding: a server on this machine's port 5000 must
    not fail unrelated tests. The port tests below call REAL_PORT_CHECK themselves."""
    seen: list[tuple[str, int]] = []
    monkeypatch.setattr(ports, "check_port_free", lambda host, port: seen.append((host, port)))
    return seen


@pytest.fixture
def no_real_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeSupervisor:
    """A fake installed vLLM and a supervise() stub."""
    fake = FakeSupervisor()
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: FAKE_INSTALL)
    monkeypatch.setattr(supervisor, "supervise", fake)
    return fake


def tiny_request(tmp_path: Path, **changes) -> api.RuntimeRequest:
    fields = {"model": str(TINY), "assume_gpus": "1xA100-80GB", "weights_dir": tmp_path / "w", "port": 5000}
    fields.update(changes)
    return api.RuntimeRequest(**fields)


# --- the weights folder check ------------------------------------------------------------------


def test_check_weights_dir_accepts_a_folder_to_be_created_and_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    weights_store.check_weights_dir(target)
    assert not (tmp_path / "a").exists()


def test_check_weights_dir_refuses_a_file_on_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError) as caught:
        weights_store.check_weights_dir(afile / "sub")
    message = caught.value.message
    assert str(afile / "sub") in message and "is a file" in message
    assert "--weights-dir" in message and "KAITO_WEIGHTS_DIR" in message
    with pytest.raises(InputError, match="not a folder"):
        weights_store.check_weights_dir(afile)


def test_check_weights_dir_refuses_an_unwritable_folder(tmp_path, monkeypatch):
    # Tests may run as root, for whom permission bits do not apply: stand in for the kernel's answer.
    monkeypatch.setattr(weights_store.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(InputError) as caught:
        weights_store.check_weights_dir(tmp_path / "weights")
    message = caught.value.message
    assert "not writable" in message and str(tmp_path) in message and "--weights-dir" in message
    assert caught.value.exit_code == 2
    weights_store.check_weights_dir(tmp_path / "weights", writable=False)  # serving: only "a folder?"


def test_run_checks_the_weights_folder_before_anything_slow(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was resolved before the weights folder was checked")

    monkeypatch.setattr(api, "resolve_model", must_not_run)
    for download_only in (False, True):
        with pytest.raises(InputError, match="cannot be used"):
            api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", weights_dir=afile / "w"), {},
                    download_only=download_only)


def test_a_local_model_folder_does_not_need_the_weights_folder(tmp_path, no_real_vllm):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert api.run(tiny_request(tmp_path, weights_dir=afile / "w"), {}) == 0


def _deny_writes(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """A read-only volume at ``root``: os.access refuses W_OK (root ignores permission bits, so the
    kernel's EROFS answer is stood in for) and the tree is made read-only where that binds."""
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (mode & os.W_OK) and real_access(path, mode, **kw))
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)


def _allow_writes(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_a_read_only_volume_with_a_complete_copy_is_served(tiny_hub, tmp_path, no_real_vllm, monkeypatch, offline):
    """An init container filled the volume; the serving container mounts it read-only."""
    import os

    wdir = tmp_path / "w"
    env = dict(os.environ)
    fill = api.RuntimeRequest(model="org/tiny-llama", endpoint=tiny_hub.url, weights_dir=wdir)
    filled = api.download_weights(fill, env)
    _deny_writes(monkeypatch, wdir)
    try:
        serve = api.RuntimeRequest(model="org/tiny-llama", endpoint=tiny_hub.url, weights_dir=wdir,
                                   assume_gpus="1xA100-80GB", offline=offline)
        assert api.run(serve, env) == 0
        assert str(filled.path) in no_real_vllm[0]["argv"]
        # --download-only exists to write: there the read-only volume is refused up front.
        with pytest.raises(InputError, match="not writable"):
            api.run(fill, env, download_only=True)
    finally:
        _allow_writes(wdir)


def test_os_errors_in_the_weights_step_become_a_weights_error(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "w" / "org--x"))

    monkeypatch.setattr(weights, "ensure_weights", broken)
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    with pytest.raises(WeightsError) as caught:
        api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path / "w"), {})
    assert caught.value.exit_code == 10
    assert "Permission denied" in caught.value.message and "org--x" in caught.value.message


# --- --download-only ---------------------------------------------------------------------------


def test_download_only_skips_probing_and_planning(tmp_path, monkeypatch, caplog):
    """An init container has no GPU: the 70B preset must still be fetched, not refused."""
    fetched = []

    def fake_ensure(model, **kwargs):
        fetched.append((model.name, kwargs))
        return weights.WeightsResult(path=tmp_path / "w" / "x", downloaded_bytes=0, reused=True, seconds=0.0, files=1)

    def must_not_run(*args, **kwargs):
        raise AssertionError("--download-only probed or planned")

    monkeypatch.setattr(weights, "ensure_weights", fake_ensure)
    monkeypatch.setattr(api, "probe_node", must_not_run)
    monkeypatch.setattr(api, "resolve_topology", must_not_run)
    monkeypatch.setattr(planner, "plan_launch", must_not_run)
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = api.RuntimeRequest(preset=BIG_PRESET, weights_dir=tmp_path / "w", verify_weights=True)
    assert api.run(request, {}, download_only=True) == 0
    assert [name for name, _ in fetched] == [BIG_PRESET]
    assert fetched[0][1]["verify"] is True and fetched[0][1]["weights_dir"] == tmp_path / "w"
    assert "not checked" in caplog.text


def test_without_download_only_the_big_preset_is_refused_on_this_cpu_inventory(tmp_path, monkeypatch):
    from kaito_runtime.errors import DoesNotFitError

    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: pytest.fail("fetched before the plan"))
    with pytest.raises(DoesNotFitError):
        api.run(api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NV36ads_A10_v5", weights_dir=tmp_path / "w"), {})


def test_download_only_does_not_need_the_kv_figures_of_config_json(hub, hub_env, tmp_path, caplog):
    """org/tiny's config.json has no attention heads: planning must refuse it, a download must not."""
    import os

    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = api.RuntimeRequest(model="org/tiny", endpoint=hub.url, weights_dir=tmp_path / "w")
    with pytest.raises(InputError, match="num_attention_heads|head"):
        api.resolve_model(request, env={})
    result = api.download_weights(request, dict(os.environ))
    assert result.revision == hub.commit_of("org/tiny")
    assert (result.path / "model.safetensors").is_file() and (result.path / "config.json").is_file()
    assert hub.commit_of("org/tiny") in caplog.text  # the resolved commit is named


def test_download_only_still_checks_the_repo_id_form(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: pytest.fail("fetched a malformed id"))
    with pytest.raises(InputError, match="org/name"):
        api.download_weights(api.RuntimeRequest(model="not-a-repo-id", weights_dir=tmp_path / "w"), {})


def test_verify_weights_reaches_ensure_weights(tmp_path, monkeypatch):
    seen = {}

    def fake_ensure(model, **kwargs):
        seen.update(kwargs)
        return weights.WeightsResult(path=tmp_path, downloaded_bytes=0, reused=True, seconds=0.0, files=1)

    monkeypatch.setattr(weights, "ensure_weights", fake_ensure)
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path), {})
    assert seen["verify"] is False
    api.fetch_model_weights(spec, api.RuntimeRequest(weights_dir=tmp_path, verify_weights=True), {})
    assert seen["verify"] is True


# --- planning only vs a real launch (multi-node) -----------------------------------------------


def test_a_dry_run_plans_two_nodes_without_rank_or_leader():
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NC48ads_A100_v4", nnodes=2, dry_run=True)
    prepared = api.prepare(request, {})
    assert (prepared.plan.tensor_parallel_size, prepared.plan.pipeline_parallel_size) == (2, 2)
    assert prepared.topology.node_rank == 0


def test_a_real_launch_needs_the_rank(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: pytest.fail("fetched without a rank"))
    request = api.RuntimeRequest(preset=BIG_PRESET, sku="Standard_NC48ads_A100_v4", nnodes=2, weights_dir=tmp_path)
    with pytest.raises(TopologyError):
        api.prepare(request, {}, planning_only=False)
    with pytest.raises(TopologyError):
        api.run(request, {})


# --- run(): readiness, the ready line, failures ------------------------------------------------


def test_readiness_polls_what_the_pass_through_arguments_chose(tmp_path, no_real_vllm, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    request = tiny_request(tmp_path, extra_vllm_args=("--port", "8001", "--served-model-name", "foo", "bar"))
    assert api.run(request, {}) == 0
    ready = no_real_vllm[0]["ready"]
    assert ready.port == 8001
    assert "foo" in (ready.served_name if isinstance(ready.served_name, tuple) else (ready.served_name,))
    assert "serving foo on http://0.0.0.0:8001/v1" in caplog.text


def test_the_ready_line_counts_from_the_start_of_run_including_the_model_phase(tmp_path, no_real_vllm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    real_resolve = api.resolve_model

    def slow_resolve(*args, **kwargs):
        time.sleep(0.4)  # a hub round trip
        return real_resolve(*args, **kwargs)

    monkeypatch.setattr(api, "resolve_model", slow_resolve)
    api.run(tiny_request(tmp_path), {})
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("ready in"))
    total = float(line.split()[2])
    model_phase = float(line.split("(model ")[1].split()[0])
    assert model_phase >= 0.4
    vllm_start = float(line.split("vLLM start ")[1].split()[0])
    assert vllm_start == 1.5
    # counted from the start of run(), model resolution included (the total is shown to 0.1 s)
    assert total + 0.05 >= model_phase


def test_failure_context_gets_the_effective_port(tmp_path, no_real_vllm, monkeypatch):
    from kaito_runtime.launch import failures

    seen = {}
    real_report = failures.failure_report

    def spy(lines, exit_code, *, plan_hint=None, **kwargs):
        seen["port"] = plan_hint.port
        return real_report(lines, exit_code, plan_hint=plan_hint, **kwargs)

    monkeypatch.setattr(failures, "failure_report", spy)
    no_real_vllm.result = SupervisorResult(exit_code=1, ready_after=None, tail=("boom",), signal_received=None)
    assert api.run(tiny_request(tmp_path, extra_vllm_args=("--port", "5001")), {}) == 1
    assert seen["port"] == 5001


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
def test_unknown_and_generic_failures_repeat_vllms_last_lines(tmp_path, no_real_vllm, caplog, tail, closing):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    no_real_vllm.result = SupervisorResult(exit_code=3, ready_after=None, tail=tail, signal_received=None)
    assert api.run(tiny_request(tmp_path), {}) == 3
    text = _error_text(caplog)
    assert "its last lines" in text
    assert text.index("the frobnicator is unsupported") < text.index(closing)
    assert text.rstrip().splitlines()[-1].find(closing) >= 0


def test_a_recognised_failure_is_one_line_without_the_tail(tmp_path, no_real_vllm, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    tail = ("loading weights", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    no_real_vllm.result = SupervisorResult(exit_code=1, ready_after=None, tail=tail, signal_received=None)
    api.run(tiny_request(tmp_path), {})
    text = _error_text(caplog)
    assert text and "its last lines" not in text and "loading weights" not in text
    assert len(text.splitlines()) == 1


def test_missing_vllm_names_this_interpreter(tmp_path, no_real_vllm, monkeypatch):
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: None)
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(tiny_request(tmp_path), {})
    assert sys.executable in caught.value.message


def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("the weights were fetched before vLLM was checked")

    monkeypatch.setattr(weights, "ensure_weights", fail)


def test_missing_vllm_is_found_before_any_download(tmp_path, no_real_vllm, monkeypatch):
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: None)
    _no_download(monkeypatch)
    request = api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(request, {})
    assert caught.value.exit_code == 20


def test_a_vllm_too_old_for_several_nodes_is_found_before_any_download(tmp_path, no_real_vllm, monkeypatch):
    monkeypatch.setattr(vllm_install, "supports_multinode_mp", lambda install: False)
    _no_download(monkeypatch)
    with pytest.raises(VllmNotInstalledError, match="across nodes"):
        api.run(_multi_node_request(tmp_path, rank=0, port=29555), {})


def test_the_architecture_warning_comes_before_the_download(tmp_path, no_real_vllm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    monkeypatch.setattr(vllm_install, "supports_architecture", lambda install, arch: False)
    seen = []

    def fake_ensure(model, **kwargs):
        seen.append("does not list architecture" in caplog.text)
        return weights.WeightsResult(path=tmp_path / "m", downloaded_bytes=0, reused=True, seconds=0.0, files=1)

    monkeypatch.setattr(weights, "ensure_weights", fake_ensure)
    request = api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    assert api.run(request, {}) == 0
    assert seen == [True]


def test_run_detects_vllm_and_builds_the_launch_once(tmp_path, no_real_vllm, monkeypatch, caplog):
    from kaito_runtime.launch import vllm_command

    caplog.set_level(logging.INFO, logger="kaito_runtime")
    detections, builds = [], []
    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: detections.append(1) or FAKE_INSTALL)
    real_build = vllm_command.build_vllm_command
    monkeypatch.setattr(vllm_command, "build_vllm_command", lambda *a, **k: builds.append(k) or real_build(*a, **k))
    config = tmp_path / "kaito.yaml"
    config.write_text("max_probe_steps: 6\nvllm:\n  max-num-seqs: 7\n")
    assert api.run(tiny_request(tmp_path, config_file=config), {}) == 0
    assert len(detections) == 1 and len(builds) == 1
    assert caplog.text.count("ignoring max_probe_steps") == 1
    argv = no_real_vllm[0]["argv"]
    assert argv[argv.index("--max-num-seqs") + 1] == "7"
    caplog.clear()
    api.dry_run(tiny_request(tmp_path, config_file=config, dry_run=True), {})
    assert caplog.text.count("ignoring max_probe_steps") == 1


def test_the_start_line_shows_the_variables_we_set_not_the_inherited_ones(tmp_path, no_real_vllm, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    assert api.run(tiny_request(tmp_path), {"MY_INHERITED_SETTING": "abc123"}) == 0
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM"))
    assert "HF_HUB_OFFLINE=1" in line and "VLLM_NO_USAGE_STATS=1" in line
    assert "MY_INHERITED_SETTING" not in line and "abc123" not in line
    assert no_real_vllm[0]["env"]["MY_INHERITED_SETTING"] == "abc123"  # still inherited by the child
    assert line.index("HF_HUB_OFFLINE=1") < line.index(str(TINY))


def test_failure_hints_use_what_vllm_really_ran(tmp_path, no_real_vllm, monkeypatch):
    from kaito_runtime.launch import failures

    seen = {}
    real_report = failures.failure_report

    def spy(lines, exit_code, *, plan_hint=None, **kwargs):
        seen.update(hint=plan_hint, **kwargs)
        return real_report(lines, exit_code, plan_hint=plan_hint, **kwargs)

    monkeypatch.setattr(failures, "failure_report", spy)
    no_real_vllm.result = SupervisorResult(exit_code=1, ready_after=None, tail=("boom",), signal_received=None)
    args = ("--gpu-memory-utilization", "0.6", "--tensor-parallel-size", "1")
    assert api.run(tiny_request(tmp_path, extra_vllm_args=args), {}) == 1
    assert seen["hint"].gpu_memory_utilization == 0.6
    assert seen["outcome"] == "exited"


def test_a_ready_timeout_is_reported_as_ours_not_as_a_vllm_exit(tmp_path, no_real_vllm, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    no_real_vllm.result = SupervisorResult(
        exit_code=124, ready_after=None, tail=("still loading",), signal_received=None, outcome="ready_timeout"
    )
    assert api.run(tiny_request(tmp_path, ready_timeout=5.0), {}) == 124
    text = _error_text(caplog)
    assert "not ready within" in text and "5 s" in text and "still loading" in text
    assert "exited with code 124" not in text


def test_an_api_key_reaches_the_readiness_check_and_is_masked(tmp_path, no_real_vllm):
    from kaito_runtime import secrets

    key = "sk-readiness-key-0123456789"
    assert api.run(tiny_request(tmp_path, extra_vllm_args=("--api-key", key)), {}) == 0
    assert no_real_vllm[0]["ready"].api_key == key
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
        host="127.0.0.1", port=_free_port(),
    )


def _free_port(span: int = 1) -> int:
    import socket

    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            for extra in range(1, span):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + extra))
            return port
        except OSError:
            continue


def _stopped_by_sigterm(fake: FakeSupervisor) -> None:
    """Each node's (fake) vLLM ends as when Kubernetes stops the pods: a forwarded SIGTERM."""
    import signal

    fake.result = SupervisorResult(exit_code=0, ready_after=1.5, tail=(), signal_received=signal.SIGTERM, outcome="stopped")


def _run_in_thread(request: api.RuntimeRequest) -> tuple[threading.Thread, list]:
    """api.run for another node of the group, in this process (its own rank, the same store)."""
    outcome: list = []

    def target() -> None:
        try:
            outcome.append(api.run(request, {}))
        except Exception as exc:  # the test asserts on it
            outcome.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def fetched(tmp_path, monkeypatch):
    result = weights.WeightsResult(path=tmp_path / "model", downloaded_bytes=0, reused=True, seconds=0.0, files=1)
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: result)
    return result


def test_leader_resolves_its_address_and_tells_vllm(tmp_path, no_real_vllm, fetched, monkeypatch, caplog):
    from kaito_runtime.launch import vllm_command

    caplog.set_level(logging.INFO, logger="kaito_runtime")
    built_launches = []
    real_build = vllm_command.build_vllm_command
    monkeypatch.setattr(vllm_command, "build_vllm_command", lambda *a, **k: built_launches.append(real_build(*a, **k)) or built_launches[-1])
    _stopped_by_sigterm(no_real_vllm)
    master_port = _free_port(span=2)
    worker, worker_outcome = _run_in_thread(_multi_node_request(tmp_path, rank=1, port=master_port))
    request = replace(_multi_node_request(tmp_path, rank=0, port=master_port), ready_timeout=5.0)
    assert api.run(request, {}) == 0
    worker.join(20)
    leader_call = next(call for call in no_real_vllm.calls if "--headless" not in call["argv"])
    argv, env = leader_call["argv"], leader_call["env"]
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"  # "localhost", resolved
    assert argv[argv.index("--node-rank") + 1] == "0"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert leader_call["ready"] is not None  # the leader serves HTTP
    assert leader_call["ready_timeout"] == 5.0
    # One owner of the child's address variables: the rendezvous, shown on the start line.
    assert built_launches and all("VLLM_HOST_IP" not in built.env for built in built_launches)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("starting vLLM"))
    assert "VLLM_HOST_IP=127.0.0.1" in line
    assert "group released: all 2 nodes checked in and agree" in caplog.text


def test_worker_waits_for_the_leaders_store_then_starts_headless(tmp_path, no_real_vllm, fetched):
    _stopped_by_sigterm(no_real_vllm)
    master_port = _free_port(span=2)
    worker, worker_outcome = _run_in_thread(replace(_multi_node_request(tmp_path, rank=1, port=master_port), ready_timeout=5.0))
    time.sleep(2.0)  # the worker starts first and waits for the leader's store
    assert not no_real_vllm.calls
    assert api.run(_multi_node_request(tmp_path, rank=0, port=master_port), {}) == 0
    worker.join(20)
    assert worker_outcome, "the worker did not finish"
    assert worker_outcome == [0]
    call = next(call for call in no_real_vllm.calls if "--headless" in call["argv"])
    argv, env = call["argv"], call["env"]
    assert argv[argv.index("--master-port") + 1] == str(master_port)
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert call["ready"] is None  # a headless worker has no HTTP server to probe
    # ...so KAITO_READY_TIMEOUT (the same env on every pod) must not stop it.
    assert call["ready_timeout"] is None


@pytest.mark.slow
def test_worker_gives_up_when_the_leader_never_opens_its_store(tmp_path, no_real_vllm, fetched):
    from kaito_runtime.errors import RendezvousTimeoutError

    port = _free_port(span=2)  # nobody listens there
    request = replace(_multi_node_request(tmp_path, rank=1, port=port), rendezvous_timeout=1.5)
    with pytest.raises(RendezvousTimeoutError) as caught:
        api.run(request, {})
    assert caught.value.exit_code == 21
    assert str(port + 1) in str(caught.value) and "--rendezvous-timeout" in str(caught.value)
    assert not no_real_vllm.calls


# --- a weights folder that cannot be created ---------------------------------------------------


def _refuse_mkdir(monkeypatch: pytest.MonkeyPatch, target: Path) -> None:
    """/proc/x as a test: the kernel refuses to create ``target`` (root ignores permission bits)."""
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == target or target.is_relative_to(self) and self != self.parent and not self.exists():
            raise PermissionError(1, "Operation not permitted", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)


@pytest.mark.parametrize("download_only", [False, True], ids=["serve", "download-only"])
def test_a_weights_folder_that_cannot_be_created_is_refused_before_the_model(tmp_path, monkeypatch, download_only):
    target = tmp_path / "proc" / "x"
    _refuse_mkdir(monkeypatch, target)
    monkeypatch.setattr(api, "resolve_model", lambda *a, **k: pytest.fail("resolved before the folder was made"))
    monkeypatch.setattr(api, "download_source", lambda *a, **k: pytest.fail("resolved before the folder was made"))
    with pytest.raises(InputError) as caught:
        api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", weights_dir=target), {}, download_only=download_only)
    message = caught.value.message
    assert caught.value.exit_code == 2
    assert f"The weights folder {target} cannot be created" in message and "Operation not permitted" in message
    assert "--weights-dir" in message and "KAITO_WEIGHTS_DIR" in message


def test_check_weights_dir_with_create_makes_the_folder_and_accepts_a_read_only_one(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    weights_store.check_weights_dir(target, writable=False, create=True)
    assert target.is_dir()
    # An existing folder on a read-only volume: mkdir would fail, but nothing needs making.
    _refuse_mkdir(monkeypatch, target)
    weights_store.check_weights_dir(target, writable=False, create=True)


def test_run_makes_the_weights_folder_before_planning(tmp_path, no_real_vllm, fetched, monkeypatch):
    target = tmp_path / "new" / "weights"
    real_prepare = api.prepare
    seen = []
    monkeypatch.setattr(api, "prepare", lambda *a, **k: seen.append(target.is_dir()) or real_prepare(*a, **k))
    request = api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=target)
    assert api.run(request, {}) == 0
    assert seen == [True]


def test_a_dry_run_creates_no_weights_folder(tmp_path):
    target = tmp_path / "not-yet"
    api.dry_run(api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=target,
                                   dry_run=True), {})
    assert not target.exists()


# --- which host a plan is sized against --------------------------------------------------------


def test_assumed_gpus_use_this_machines_host_and_a_sku_its_own(tmp_path, monkeypatch):
    from kaito_runtime.types import GiB, HostInfo

    here = HostInfo(cpu_count=3, ram_total_bytes=7 * GiB, ram_available_bytes=5 * GiB)
    asked = []
    monkeypatch.setattr(inventory, "probe_host", lambda weights_dir=None, **k: asked.append(weights_dir) or here)
    node = api.probe_node(api.RuntimeRequest(assume_gpus="1xH100", weights_dir=tmp_path), {})
    assert node.host == here and asked == [tmp_path]
    sku = api.probe_node(api.RuntimeRequest(sku="Standard_NC24ads_A100_v4", weights_dir=tmp_path), {})
    assert sku.host != here and sku.host.ram_total_bytes > 0 and asked == [tmp_path]


def test_cpu_with_assumed_gpus_plans_against_this_machines_ram(monkeypatch):
    from kaito_runtime.types import GiB, HostInfo

    here = HostInfo(cpu_count=2, ram_total_bytes=24 * GiB, ram_available_bytes=23 * GiB)
    monkeypatch.setattr(inventory, "probe_host", lambda weights_dir=None, **k: here)
    request = api.RuntimeRequest(
        preset=BIG_PRESET, assume_gpus="1xH100", overrides=PlanOverrides(force_cpu=True), dry_run=True
    )
    with pytest.raises(DoesNotFitError) as caught:
        api.dry_run(request, {})
    assert "23.0 GiB RAM is available" in caught.value.message


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


def test_the_plan_line_shows_the_effective_values_and_marks_overrides(tmp_path, no_real_vllm, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    config = tmp_path / "kaito.yaml"
    config.write_text("vllm:\n  gpu-memory-utilization: 0.5\n")
    request = tiny_request(tmp_path, config_file=config, extra_vllm_args=("--max-model-len", "128"))
    assert api.run(request, {}) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "plan: tiny-llama on GPU, TP 1 x PP 1, max-model-len 128" in messages
    assert "  override: --max-model-len 128 (from pass-through; the plan said 512)" in messages
    assert any(m.startswith("  override: --gpu-memory-utilization 0.50 (from --config; the plan said 0.") for m in messages)
    assert not any("override: --tensor-parallel-size" in m for m in messages)


# --- the port ------------------------------------------------------------------------------------


def test_run_checks_the_port_vllm_will_use_before_the_weights(tmp_path, no_real_vllm, monkeypatch, port_checks):
    order = []
    monkeypatch.setattr(ports, "check_port_free", lambda host, port: order.append(("port", host, port)))
    real_fetch = api.fetch_weights
    monkeypatch.setattr(api, "fetch_weights", lambda *a, **k: order.append(("weights",)) or real_fetch(*a, **k))
    request = tiny_request(tmp_path, weights_dir=tmp_path / "w", extra_vllm_args=("--port", "6123"))
    request = replace(request, model=None, preset="phi-4-mini-instruct")
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: weights.WeightsResult(
        path=tmp_path / "m", downloaded_bytes=0, reused=True, seconds=0.0, files=1))
    assert api.run(request, {}) == 0
    assert order == [("port", "0.0.0.0", 6123), ("weights",)]


def test_a_port_in_use_is_refused_before_the_weights(tmp_path, no_real_vllm, monkeypatch):
    import socket

    monkeypatch.setattr(ports, "check_port_free", REAL_PORT_CHECK)
    _no_download_at_all = lambda *a, **k: pytest.fail("the weights step ran")  # noqa: E731
    monkeypatch.setattr(api, "fetch_weights", _no_download_at_all)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InputError) as caught:
            api.run(tiny_request(tmp_path, host="127.0.0.1", port=port), {})
    assert caught.value.exit_code == 2
    assert f"Port {port} on 127.0.0.1 is already in use" in caught.value.message
    assert "--port (KAITO_PORT)" in caught.value.message
    assert not no_real_vllm.calls


def test_a_worker_checks_the_http_port_its_health_endpoint_uses(tmp_path, no_real_vllm, fetched, port_checks):
    """A headless worker serves no API, but its launcher answers /health on that port."""
    _stopped_by_sigterm(no_real_vllm)
    master_port = _free_port(span=2)
    request = _multi_node_request(tmp_path, rank=1, port=master_port)
    worker, _ = _run_in_thread(request)
    leader = _multi_node_request(tmp_path, rank=0, port=master_port)
    assert api.run(leader, {}) == 0
    worker.join(20)
    assert ("127.0.0.1", request.port) in port_checks


# --- gated models without a token ---------------------------------------------------------------


GATED = "llama-3.1-8b-instruct"


def test_a_gated_preset_without_a_token_is_warned_about_before_the_weights(tmp_path, no_real_vllm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    warned = []

    def fake_ensure(model, **kwargs):
        warned.append("is gated: a Hugging Face token with access is needed" in caplog.text)
        return weights.WeightsResult(path=tmp_path / "m", downloaded_bytes=0, reused=True, seconds=0.0, files=1)

    monkeypatch.setattr(weights, "ensure_weights", fake_ensure)
    request = api.RuntimeRequest(preset=GATED, assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w")
    assert api.run(request, {"HF_HOME": str(tmp_path / "hf")}) == 0
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
    weights_store.write_marker(folder, model.repo_id, model.revision, "safetensors", [RemoteFile("config.json", 2)])
    prepared, _ = api.dry_run(request, env)
    assert prepared.warnings == ()


def test_a_local_model_folder_has_no_gated_warning(tmp_path):
    prepared, _ = api.dry_run(tiny_request(tmp_path, dry_run=True), {})
    assert prepared.warnings == ()


# --- one form for the weights line ------------------------------------------------------------


def test_the_weights_line_has_one_form_in_every_mode(tmp_path, no_real_vllm, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="kaito_runtime")
    folder = tmp_path / "w" / "org--m" / ("c" * 40)
    result = weights.WeightsResult(path=folder, downloaded_bytes=0, reused=True, seconds=0.0, files=1, revision="c" * 40)
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: result)
    api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", weights_dir=tmp_path / "w"), {}, download_only=True)
    api.run(api.RuntimeRequest(preset="phi-4-mini-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w"), {})
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


def test_download_only_hands_the_weights_step_only_what_it_needs(hub, hub_env, tmp_path, monkeypatch):
    """No made-up model figures: a repo id becomes repo, revision and load format, nothing else."""
    from kaito_runtime.types import WeightsSource

    given = []
    real = weights.ensure_weights
    monkeypatch.setattr(weights, "ensure_weights", lambda source, **kw: given.append(source) or real(source, **kw))
    request = api.RuntimeRequest(model="org/tiny", revision="main", endpoint=hub.url, weights_dir=tmp_path / "w")
    api.download_weights(request, {})
    assert given == [WeightsSource(name="tiny", repo_id="org/tiny", revision="main")]
    assert not hasattr(given[0], "attention") and not hasattr(given[0], "weights_bytes")


def test_a_join_worker_learns_the_model_and_settings_from_the_leader(tmp_path, no_real_vllm, fetched):
    _stopped_by_sigterm(no_real_vllm)
    master_port = _free_port(span=2)
    leader = replace(_multi_node_request(tmp_path, rank=0, port=master_port), extra_vllm_args=("--max-num-seqs", "7"),
                     overrides=api.PlanOverrides(max_model_len=4096))
    joiner = api.RuntimeRequest(join=True, node_rank=1, leader_address="localhost", master_port=master_port,
                                assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w", rendezvous_timeout=10,
                                host="127.0.0.1", port=_free_port())
    worker, outcome = _run_in_thread(joiner)
    assert api.run(leader, {}) == 0
    worker.join(20)
    assert outcome == [0]
    calls = {("worker" if "--headless" in c["argv"] else "leader"): c["argv"] for c in no_real_vllm.calls}
    for argv in calls.values():
        assert argv[argv.index("--max-model-len") + 1] == "4096"
        assert argv[argv.index("--max-num-seqs") + 1] == "7"
        assert argv[argv.index("--nnodes") + 1] == "2"
    assert calls["worker"][calls["worker"].index("--node-rank") + 1] == "1"


def test_join_refuses_a_model_of_its_own_and_needs_a_leader(tmp_path):
    with pytest.raises(InputError) as caught:
        api.run(api.RuntimeRequest(join=True, preset="phi-4-mini-instruct", weights_dir=tmp_path), {})
    assert "--join learns the model" in caught.value.message
    with pytest.raises(InputError) as caught:
        api.run(api.RuntimeRequest(join=True, weights_dir=tmp_path), {})
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


def test_join_without_vllm_exits_20_before_contacting_the_store(tmp_path, monkeypatch):
    """Issue 18 item 12: `--join` on an install without vLLM crashed with "No module named torch"
    (exit 1) while contacting the leader's store; the install is checked first (exit 20)."""
    from kaito_runtime.launch import group
    from kaito_runtime.launch.group import store as group_store

    monkeypatch.setattr(vllm_install, "detect_vllm", lambda *a, **k: None)

    def no_torch(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(group_store, "_tcp_store", no_torch)
    monkeypatch.setattr(group, "learn_from_leader", no_torch)
    monkeypatch.setattr(group, "preload_torch", lambda: None)
    request = api.RuntimeRequest(join=True, node_rank=1, leader_address="127.0.0.1", master_port=_free_port(),
                                 weights_dir=tmp_path / "w", rendezvous_timeout=5)
    with pytest.raises(VllmNotInstalledError) as caught:
        api.run(request, {})
    assert caught.value.exit_code == 20

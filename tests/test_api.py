"""kaito_runtime.api: the order of the steps, what each step is given, and what run() logs.

vLLM itself is never started here: ``supervisor.supervise`` is replaced by a stub that records
what it was asked to do (tests/test_e2e_serve.py runs the real thing).
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest

from kaito_runtime import api, planner, supervisor, vllm_install, weights
from kaito_runtime.errors import InputError, TopologyError, VllmNotInstalledError, WeightsError
from kaito_runtime.supervisor import SupervisorResult

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


# --- the default weights folder ---------------------------------------------------------------


def test_default_weights_dir_prefers_the_explicit_variable(tmp_path):
    assert api.default_weights_dir({"KAITO_WEIGHTS_DIR": str(tmp_path / "x")}) == tmp_path / "x"


def test_default_weights_dir_needs_the_workspace_weights_folder_itself(tmp_path, monkeypatch):
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    monkeypatch.setattr(api, "CONTAINER_WEIGHTS_DIR", workspace / "weights")
    env = {"HF_HOME": str(tmp_path / "hf")}
    # /workspace alone (common on cloud dev boxes) is not a KAITO container.
    assert api.default_weights_dir(env) == tmp_path / "hf" / "kaito-weights"
    (workspace / "weights").mkdir()
    assert api.default_weights_dir(env) == workspace / "weights"


# --- the weights folder check ------------------------------------------------------------------


def test_check_weights_dir_accepts_a_folder_to_be_created_and_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    api.check_weights_dir(target)
    assert not (tmp_path / "a").exists()


def test_check_weights_dir_refuses_a_file_on_the_path(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError) as caught:
        api.check_weights_dir(afile / "sub")
    message = caught.value.message
    assert str(afile / "sub") in message and "is a file" in message
    assert "--weights-dir" in message and "KAITO_WEIGHTS_DIR" in message
    with pytest.raises(InputError, match="not a folder"):
        api.check_weights_dir(afile)


def test_check_weights_dir_refuses_an_unwritable_folder(tmp_path, monkeypatch):
    # Tests may run as root, for whom permission bits do not apply: stand in for the kernel's answer.
    monkeypatch.setattr(api.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(InputError) as caught:
        api.check_weights_dir(tmp_path / "weights")
    message = caught.value.message
    assert "not writable" in message and str(tmp_path) in message and "--weights-dir" in message
    assert caught.value.exit_code == 2


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


# --- --revision --------------------------------------------------------------------------------


def test_revision_with_a_preset_is_refused_unless_it_is_the_pin():
    spec = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct"))
    with pytest.raises(InputError) as caught:
        api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct", revision="main"))
    message = caught.value.message
    assert f"pins {spec.repo_id} at commit {spec.revision}" in message
    assert f"--model {spec.repo_id} --revision main" in message
    same = api.resolve_model(api.RuntimeRequest(preset="phi-4-mini-instruct", revision=spec.revision))
    assert same.revision == spec.revision


def test_revision_with_a_local_folder_is_refused():
    with pytest.raises(InputError, match="local folder"):
        api.resolve_model(api.RuntimeRequest(model=str(TINY), revision="v1"))


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
    assert total >= model_phase  # counted from the start of run(), model resolution included


def test_failure_context_gets_the_effective_port(tmp_path, no_real_vllm, monkeypatch):
    from kaito_runtime import failures

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


def test_phase_times_line_names_every_phase():
    line = api.PhaseTimes(model=0.5, inventory=0.1, plan=0.2, weights=3.0, vllm_start=9.0).line()
    for phase in ("model 0.50 s", "inventory 0.10 s", "plan 0.20 s", "weights 3.00 s", "vLLM start 9.0 s"):
        assert phase in line


# --- multi-node: the group meets before vLLM starts ----------------------------------------------


def _multi_node_request(tmp_path: Path, rank: int, port: int) -> api.RuntimeRequest:
    return api.RuntimeRequest(
        preset="llama-3.1-8b-instruct", assume_gpus="1xA100-80GB", weights_dir=tmp_path / "w",
        nnodes=2, node_rank=rank, leader_address="localhost", master_port=port, rendezvous_timeout=10,
    )


@pytest.fixture
def fetched(tmp_path, monkeypatch):
    result = weights.WeightsResult(path=tmp_path / "model", downloaded_bytes=0, reused=True, seconds=0.0, files=1)
    monkeypatch.setattr(weights, "ensure_weights", lambda *a, **k: result)
    return result


def test_leader_resolves_its_address_and_tells_vllm(tmp_path, no_real_vllm, fetched):
    assert api.run(_multi_node_request(tmp_path, rank=0, port=29555), {}) == 0
    argv, env = no_real_vllm[0]["argv"], no_real_vllm[0]["env"]
    assert argv[argv.index("--master-addr") + 1] == "127.0.0.1"  # "localhost", resolved
    assert argv[argv.index("--node-rank") + 1] == "0" and "--headless" not in argv
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert no_real_vllm[0]["ready"] is not None  # the leader serves HTTP


def test_worker_waits_for_the_leader_port_then_starts_headless(tmp_path, no_real_vllm, fetched):
    import socket

    with socket.socket() as leader:
        leader.bind(("127.0.0.1", 0))
        leader.listen()
        port = leader.getsockname()[1]
        assert api.run(_multi_node_request(tmp_path, rank=1, port=port), {}) == 0
    argv, env = no_real_vllm[0]["argv"], no_real_vllm[0]["env"]
    assert "--headless" in argv and argv[argv.index("--master-port") + 1] == str(port)
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert no_real_vllm[0]["ready"] is None  # a headless worker has no HTTP server to probe


def test_worker_gives_up_when_the_leader_never_listens(tmp_path, no_real_vllm, fetched):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = _multi_node_request(tmp_path, rank=1, port=port)
    request = api.RuntimeRequest(**{**request.__dict__, "rendezvous_timeout": 1.5})
    with pytest.raises(TopologyError) as caught:
        api.run(request, {})
    assert str(port) in str(caught.value) and "--rendezvous-timeout" in str(caught.value)
    assert not no_real_vllm.calls

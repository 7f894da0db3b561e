"""`kaito-run` through click's CliRunner, and once through the installed console script and a wheel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.cli import main
from tests.support.ci import missing
from tests.support.ports import free_port

REPO = Path(__file__).resolve().parent.parent
FAMILIES = {"deepseek", "falcon", "gemma-3", "gpt-oss", "llama", "mistral", "phi-3", "phi-4", "qwen"}


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_list_presets_table_names_every_preset():
    result = invoke("--list-presets")
    assert result.exit_code == 0
    for spec in load_catalog().presets:
        assert spec.name in result.output
    assert "PRESET" in result.output.splitlines()[0]


def test_list_presets_json_parses_and_covers_all_families():
    result = invoke("--list-presets", "--output", "json")
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {row["family"] for row in rows} == FAMILIES
    by_name = {row["name"]: row for row in rows}
    assert by_name["llama-3.3-70b-instruct"]["multi_node"] is True
    assert len(by_name["llama-3.3-70b-instruct"]["revision"]) == 40


def test_unknown_preset_exits_2_with_suggestion():
    result = CliRunner().invoke(main, ["--preset", "llama-3.3-70b", "--dry-run"])
    assert result.exit_code == 2
    assert "did you mean llama-3.3-70b-instruct" in result.output.lower()


def test_unknown_preset_without_dry_run_also_exits_2():
    result = CliRunner().invoke(main, ["--preset", "llama-3.3-70b"])
    assert result.exit_code == 2
    assert "llama-3.3-70b-instruct" in result.output


def test_preset_from_environment_variable():
    result = CliRunner().invoke(
        main, ["--dry-run", "--sku", "Standard_NC96ads_A100_v4"], env={"KAITO_PRESET": "llama-3.3-70b-instruct"}
    )
    assert result.exit_code == 0, result.output
    assert "llama-3.3-70b-instruct" in result.output


def test_dry_run_70b_on_one_a100_does_not_fit():
    result = CliRunner().invoke(
        main, ["--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC24ads_A100_v4"]
    )
    assert result.exit_code == 2
    assert "does not fit" in result.output
    assert "needs" in result.output and "offers" in result.output  # the numbers on both sides
    assert "TP 2" in result.output  # and what would fit


def test_dry_run_70b_on_four_a100_plans_tp4():
    result = invoke(
        "--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC96ads_A100_v4", "-o", "json"
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["plan"]["tensor_parallel_size"] == 4
    argv = payload["vllm"]["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--served-model-name") + 1] == "llama-3.3-70b-instruct"


def test_the_text_dry_run_states_kaitos_serving_features_and_agrees_with_the_command():
    on = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--sku", "Standard_NC24ads_A100_v4",
                "--kv-cache-cpu-memory-utilization", "0.5")
    assert on.exit_code == 0, on.output
    lines = on.output.splitlines()
    offload = next(line for line in lines if line.startswith("KV offload "))
    size = offload.split("--kv-offloading-size ", 1)[1].split(" GiB", 1)[0]
    assert float(size) > 0 and "0.5 x" in offload and f"--kv-offloading-size {size} " in on.output
    assert any(line.startswith("429 guard  on") for line in lines)
    assert any(line.startswith("Drain     ") and "25 s" in line for line in lines)  # 30 s grace - 5 s
    off = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--sku", "Standard_NC24ads_A100_v4",
                 "--disable-rate-limit")
    assert off.exit_code == 0, off.output
    assert "KV offload off (--kv-cache-cpu-memory-utilization is 0 or unset)" in off.output
    assert "429 guard" not in off.output and "--kv-offloading-size" not in off.output


@pytest.mark.parametrize("hostname", [None, "ci-runner-7", "myws-1"])
def test_done_when_two_nodes_dry_run_needs_no_rank_or_leader(hostname):
    """Issue 3, done-when: the literal command, with no rank and no leader address. A CI runner's
    or a compose container's hostname ordinal is not taken as a rank (neither 7 of 2 nor a worker)."""
    result = invoke(
        "--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC48ads_A100_v4", "--nnodes", "2",
        env={"HOSTNAME": hostname},
    )
    assert result.exit_code == 0, result.output
    assert "tensor-parallel 2 x pipeline-parallel 2" in result.output
    assert "--tensor-parallel-size 2 --pipeline-parallel-size 2" in result.output
    assert "node 0 of 2 (rank assumed for planning)" in result.output and "--headless" not in result.output


def test_doctor_with_a_node_count_ignores_a_ci_hostname():
    result = invoke("doctor", "--nnodes", "2", "--sku", "Standard_NC48ads_A100_v4", env={"HOSTNAME": "ci-runner-7"})
    assert result.exit_code == 0, result.output
    assert "node rank 0 of 2 nodes (leader)" in result.output and "Assumed for planning" in result.output


def test_two_nodes_without_a_rank_is_refused_for_a_real_launch(tmp_path):
    result = CliRunner().invoke(
        main,
        ["--preset", "llama-3.3-70b-instruct", "--sku", "Standard_NC48ads_A100_v4", "--nnodes", "2",
         "--weights-dir", str(tmp_path), "--port", str(free_port()), "--metrics-port", "0"],
    )  # a free port: the launcher checks (and holds) vLLM's port first, and 5000 may be busy here
    assert result.exit_code == 2
    assert "--node-rank" in result.output


def test_dry_run_70b_on_two_nodes_plans_tp2_pp2():
    result = invoke(
        "--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC48ads_A100_v4",
        "--nnodes", "2", "--node-rank", "0", "--leader-address", "10.1.2.3", "-o", "json",
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)["plan"]
    assert (plan["tensor_parallel_size"], plan["pipeline_parallel_size"]) == (2, 2)


def test_dry_run_text_shows_reasoning_and_command():
    result = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB")
    assert result.exit_code == 0, result.output
    assert "Why" in result.output and "Command" in result.output
    assert "--served-model-name phi-4-mini-instruct" in result.output
    assert "HF_HUB_OFFLINE=1" in result.output


def test_dry_run_does_not_leak_token(tmp_path):
    secret = "hf_dryRunSecretValue1234567890"
    result = CliRunner().invoke(
        main,
        ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json"],
        env={"HF_TOKEN": secret},
    )
    assert result.exit_code == 0, result.output
    assert secret not in result.output
    payload = json.loads(result.output)
    assert "HF_TOKEN" in payload["vllm"]["unset_env"]
    assert payload["token_source"] == "HF_TOKEN"


def test_passthrough_after_double_dash_reaches_command():
    result = invoke(
        "--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json",
        "--", "--max-num-seqs", "7",
    )
    assert result.exit_code == 0, result.output
    argv = json.loads(result.output)["vllm"]["argv"]
    assert argv[argv.index("--max-num-seqs") + 1] == "7"


def test_stray_positional_argument_is_a_usage_error():
    result = CliRunner().invoke(main, ["--preset", "phi-4", "--dry-run", "oops"])
    assert result.exit_code == 2


def test_no_model_is_a_clear_error():
    result = CliRunner().invoke(main, ["--dry-run"], env={"KAITO_PRESET": None, "KAITO_MODEL": None})
    assert result.exit_code == 2
    assert "--preset" in result.output


LAUNCH_OPTIONS = ("--preset", "--model", "--sku", "--assume-gpus", "--max-model-len",
                  "--token-file", "--config", "--grace-period", "--port", "--verify-weights")
LAUNCH_ENV_NAMES = ("KAITO_PRESET", "KAITO_MODEL", "KAITO_PORT", "KAITO_HF_TOKEN_FILE", "KAITO_WEIGHTS_DIR",
                    "KAITO_CONFIG_FILE", "KAITO_NNODES", "KAITO_VERIFY_WEIGHTS")


@pytest.mark.parametrize("args", [["serve", "--help"], ["--help"], ["-h"]], ids=" ".join)
def test_help_documents_every_option_and_its_environment_variable(args):
    result = invoke(*args)
    assert result.exit_code == 0
    for option in LAUNCH_OPTIONS + LAUNCH_ENV_NAMES:
        assert option in result.output


def test_top_level_help_also_names_doctor_and_version():
    result = invoke("--help")
    assert "doctor" in result.output and "--version" in result.output
    for command in ("plan", "download", "list-presets", "export-preset"):
        assert f"  {command} " in result.output
    doctor = invoke("doctor", "--help")
    assert "KAITO_SKU" in doctor.output and "KAITO_LOG_FORMAT" in doctor.output


def test_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert version("kaito-runtime") in result.output and "kaito-run" in result.output


def test_doctor_reports_cleanly_without_gpu():
    # A recorded 8-GPU machine, hidden by an empty CUDA_VISIBLE_DEVICES: the reason must be named.
    recording = REPO / "tests" / "data" / "nvml" / "h100-sxm-8x.json"
    result = CliRunner().invoke(
        main, ["doctor"], env={"KAITO_NVML_RECORDING": str(recording), "CUDA_VISIBLE_DEVICES": ""}
    )
    assert result.exit_code == 0, result.output
    assert "No GPU:" in result.output
    assert "CUDA_VISIBLE_DEVICES" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["--grace-period", "-1"],
        ["--ready-timeout", "0"],
        ["--ready-timeout", "-3"],
    ],
)
def test_numbers_that_break_supervision_are_usage_errors(args):
    result = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct", *args])
    assert result.exit_code == 2
    assert args[0] in result.output


def test_revision_with_a_preset_is_refused():
    result = CliRunner().invoke(main, ["--preset", "phi-4", "--revision", "main", "--dry-run", "--assume-gpus", "1xA100-80GB"])
    assert result.exit_code == 2
    assert "the preset pins microsoft/phi-4" in result.output
    assert "--model microsoft/phi-4 --revision main" in result.output


def test_revision_with_a_local_folder_is_refused():
    result = CliRunner().invoke(main, ["--model", str(REPO / "models" / "tiny-llama"), "--revision", "v2", "--dry-run"])
    assert result.exit_code == 2
    assert "local folder" in result.output


@pytest.mark.parametrize("download_only", [False, True])
def test_a_file_in_the_weights_path_is_one_line_exit_2(tmp_path, download_only):
    afile = tmp_path / "afile"
    afile.write_text("x")
    args = ["--preset", "phi-4-mini-instruct", "--weights-dir", str(afile / "sub")]
    result = CliRunner().invoke(main, args + (["--download-only"] if download_only else []))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert str(afile / "sub") in result.output and "--weights-dir" in result.output


def test_os_error_is_one_line_exit_1(monkeypatch):
    from kaito_runtime import api

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/var/lib/somewhere")

    monkeypatch.setattr(api, "run", broken)
    result = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct"])
    assert result.exit_code == 1
    assert result.output.strip() == "kaito-run: error: Permission denied: /var/lib/somewhere (run with --log-level debug for the traceback)"


def test_unexpected_error_is_one_line_and_the_traceback_is_at_debug(monkeypatch):
    from kaito_runtime import api

    def broken(*args, **kwargs):
        raise ValueError("something nobody expected")

    monkeypatch.setattr(api, "run", broken)
    quiet = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct"])
    assert quiet.exit_code == 1
    assert "Traceback" not in quiet.output
    assert "unexpected ValueError: something nobody expected" in quiet.output
    assert "--log-level debug" in quiet.output
    loud = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct", "--log-level", "debug"])
    assert loud.exit_code == 1
    assert "Traceback" in loud.output and "in broken" in loud.output


def test_error_lines_are_redacted(monkeypatch):
    from kaito_runtime import api
    from kaito_runtime.errors import WeightsError
    from kaito_runtime.secrets import register_secret

    secret = "hf_errorLineSecret_0123456789"
    register_secret(secret)

    def leaky(*args, **kwargs):
        raise WeightsError("The hub refused", why=f"server said: invalid token {secret}")

    monkeypatch.setattr(api, "run", leaky)
    result = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct"])
    assert result.exit_code == 10
    assert secret not in result.output and "invalid token ***" in result.output

    def unexpected(*args, **kwargs):
        raise RuntimeError(f"bad header Authorization: Bearer {secret}")

    monkeypatch.setattr(api, "run", unexpected)
    result = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct", "--log-level", "debug"])
    assert result.exit_code == 1
    assert secret not in result.output


def test_download_only_through_the_hub_emulator(tiny_hub, tmp_path):
    args = ["--model", "org/tiny-llama", "--download-only", "--weights-dir", str(tmp_path / "w"), "--verify-weights"]
    result = CliRunner().invoke(main, args, env={"HF_ENDPOINT": tiny_hub.url})
    assert result.exit_code == 0, result.output
    folder = tmp_path / "w" / "org--tiny-llama" / tiny_hub.commit_of("org/tiny-llama")
    expected = (REPO / "models" / "tiny-llama" / "model.safetensors").stat().st_size
    assert (folder / "model.safetensors").stat().st_size == expected
    assert "not checked" in result.output
    again = CliRunner().invoke(main, args, env={"HF_ENDPOINT": tiny_hub.url})  # verified reuse
    assert again.exit_code == 0, again.output


def test_doctor_shows_each_inventory_note_once():
    recording = REPO / "tests" / "data" / "nvml" / "h100-nvl-4x-pairs.json"
    result = CliRunner().invoke(main, ["doctor"], env={"KAITO_NVML_RECORDING": str(recording)})
    assert result.exit_code == 0, result.output
    assert result.output.count("NVLink connects only some GPU pairs") == 1, result.output


def test_serve_still_logs_the_inventory_notes(tmp_path):
    recording = REPO / "tests" / "data" / "nvml" / "h100-nvl-4x-pairs.json"
    result = CliRunner().invoke(
        main, ["--preset", "phi-4-mini-instruct", "--dry-run"], env={"KAITO_NVML_RECORDING": str(recording)}
    )
    assert result.exit_code == 0, result.output
    assert result.output.count("NVLink connects only some GPU pairs") == 1, result.output


def test_dry_run_does_not_print_an_api_key_back():
    key = "sk-dry-run-key-0123456789"
    for output in ("text", "json"):
        result = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", output,
                        "--", "--api-key", key)
        assert result.exit_code == 0, result.output
        assert key not in result.output and "VLLM_API_KEY" in result.output and "***" in result.output
        assert "--api-key" not in result.output  # it goes to vLLM in VLLM_API_KEY, not on the command line


def test_a_gated_download_leaves_no_token_in_the_weights_folder(hub, hub_env, tmp_path):
    """The token reaches the hub in a header only: not in any file of the weights folder (markers,
    refs, locks, hf's own .cache metadata), and not in the output at debug level."""
    from tests.conftest import GRANTED_TOKEN

    weights_dir = tmp_path / "w"
    args = ["--model", "org/gated", "--download-only", "--weights-dir", str(weights_dir), "--log-level", "debug"]
    result = CliRunner().invoke(main, args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": GRANTED_TOKEN})
    assert result.exit_code == 0, result.output
    files = [p for p in weights_dir.rglob("*") if p.is_file()]
    assert any(p.name == "model.safetensors" for p in files)  # the gated download really happened
    assert [p for p in files if GRANTED_TOKEN.encode() in p.read_bytes()] == []
    assert GRANTED_TOKEN not in result.output


def test_doctor_json():
    result = invoke("doctor", "-o", "json", "--sku", "Standard_ND96isr_H100_v5")
    assert result.exit_code == 0
    payload = json.loads(result.output)
    assert len(payload["inventory"]["gpus"]) == 8


def test_bad_topology_env_exits_2():
    result = CliRunner().invoke(
        main,
        ["--preset", "phi-4", "--dry-run", "--assume-gpus", "1xA100-80GB"],
        env={"LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "5", "LWS_LEADER_ADDRESS": "x-0.x"},
    )
    assert result.exit_code == 2
    assert "LWS_WORKER_INDEX" in result.output


def _console_script() -> Path:
    script = Path(sys.executable).parent / "kaito-run"
    if not script.exists():
        missing("the kaito-run console script is not installed in this environment (pip install -e .)")
    return script


@pytest.mark.slow
def test_installed_console_script_lists_and_rejects(tmp_path):
    script = _console_script()
    listed = subprocess.run([str(script), "--list-presets", "-o", "json"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert {row["family"] for row in json.loads(listed.stdout)} == FAMILIES
    wrong = subprocess.run([str(script), "--preset", "llama-3.3-70b"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2
    assert "llama-3.3-70b-instruct" in wrong.stderr


@pytest.mark.slow
def test_wheel_ships_the_catalog(tmp_path):
    """`pip install .` puts presets/ inside the package: a wheel install run elsewhere finds them all."""
    if shutil.which("git") is None:
        missing("git is needed to copy the tracked tree")
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        missing("hatchling is not installed for a no-isolation build (it is in the test extra)")
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("kaito_runtime-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert (target / "kaito_runtime" / "presets" / "llama.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import json, kaito_runtime, kaito_runtime.settings as d; from kaito_runtime.model.catalog import load_catalog;"
        "print(json.dumps([kaito_runtime.__file__, str(d.presets_dir()), len(load_catalog().presets)]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, check=True, timeout=60)
    module_file, presets, count = json.loads(out.stdout)
    assert module_file.startswith(str(target))
    assert presets.startswith(str(target))
    assert count == len(load_catalog().presets)


@pytest.mark.parametrize(
    "args",
    [
        ["--list-presets"],
        ["--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC96ads_A100_v4"],
        ["--preset", "phi-4-mini-instruct", "--dry-run"],
        # a multi-node plan too: only a real group launch imports torch (for its store)
        ["--preset", "llama-3.3-70b-instruct", "--dry-run", "--sku", "Standard_NC48ads_A100_v4",
         "--nnodes", "2", "--node-rank", "1", "--leader-address", "10.1.2.3"],
        ["doctor"],
    ],
)
def test_instant_commands_import_no_torch_transformers_or_vllm(args):
    probe = (
        "import sys\n"
        "from kaito_runtime.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'vllm') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stderr, out.stderr[-2000:]


# --- a dry run of a model that does not fit -------------------------------------------------------


@pytest.fixture
def no_gpu_here(monkeypatch):
    from kaito_runtime.node import inventory
    from kaito_runtime.types import GiB, HostInfo, NodeInventory

    host = HostInfo(cpu_count=2, ram_total_bytes=24 * GiB, ram_available_bytes=23 * GiB)
    node = NodeInventory(gpus=(), host=host, source="none", no_gpu_reason="no NVIDIA driver")
    monkeypatch.setattr(inventory, "probe_inventory", lambda **k: node)


def test_a_dry_run_that_does_not_fit_shows_the_model_then_the_error(no_gpu_here):
    result = CliRunner().invoke(main, ["--preset", "llama-3.3-70b-instruct", "--dry-run"], env={"HF_TOKEN": None})
    assert result.exit_code == 2
    out = result.stdout.splitlines()
    assert out[0] == "Model     llama-3.3-70b-instruct"
    assert out[1].startswith("          meta-llama/Llama-3.3-70B-Instruct @ ")
    assert "LlamaForCausalLM, weights " in out[2] and "context 131,072" in out[2]
    assert "gated" in out[3] and any(line.startswith("          vLLM args --tool-call-parser") for line in out)
    assert any(line.startswith("Warning   meta-llama/Llama-3.3-70B-Instruct is gated") for line in out)
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("kaito-run: error: llama-3.3-70b-instruct does not fit")
    assert "--sku SKU or --assume-gpus 4xA100-80GB" in errors[0]
    assert "kaito-run: error" not in result.stdout


def test_a_json_dry_run_that_does_not_fit_is_one_json_document(no_gpu_here):
    result = CliRunner().invoke(main, ["--preset", "llama-3.3-70b-instruct", "--dry-run", "-o", "json"])
    assert result.exit_code == 2
    payload = json.loads(result.stdout)
    assert payload["fits"] is False and payload["model"]["name"] == "llama-3.3-70b-instruct"
    assert payload["error"].startswith("llama-3.3-70b-instruct does not fit") and "RAM is available" in payload["error"]


def test_a_json_dry_run_that_fits_says_so():
    result = invoke("--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["fits"] is True


# --- usage errors name what the user typed -------------------------------------------------------


def test_usage_errors_do_not_name_an_implied_serve_subcommand():
    result = CliRunner().invoke(main, ["--preset", "phi-4-mini-instruct", "--port", "abc"])
    assert result.exit_code == 2
    assert "Usage: kaito-run [OPTIONS] [-- VLLM_ARGS...]" in result.stderr
    assert "Try 'kaito-run --help' for help." in result.stderr
    assert "kaito-run serve" not in result.stderr
    typed = CliRunner().invoke(main, ["serve", "--port", "abc"])
    assert typed.exit_code == 2 and "Try 'kaito-run serve --help' for help." in typed.stderr


def test_help_of_an_implied_serve_shows_the_pass_through_form():
    result = invoke("--preset", "x", "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: kaito-run [OPTIONS] [-- VLLM_ARGS...]")


# --- the summary shows what vLLM will get ---------------------------------------------------------


def test_dry_run_summary_marks_config_and_pass_through_overrides(tmp_path):
    config = tmp_path / "kaito.yaml"
    config.write_text("vllm:\n  gpu-memory-utilization: 0.5\n  served-model-name: cfgname\n  max-model-len: 256\n")
    result = invoke(
        "--model", str(REPO / "models" / "tiny-llama"), "--assume-gpus", "1xA100-80GB", "--dry-run",
        "--config", str(config), "--", "--max-model-len", "128",
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "Memory    --gpu-memory-utilization 0.50 (from --config; the plan said 0.95)" in lines
    assert any(line.startswith("Context   --max-model-len 128 (from pass-through; the plan said 512)") for line in lines)
    assert "Serve     cfgname (from --config; the plan said tiny-llama) on http://0.0.0.0:5000/v1" in lines


def test_an_option_before_the_doctor_command_still_runs_doctor():
    recording = REPO / "tests" / "data" / "nvml" / "h100-sxm-8x.json"
    result = CliRunner().invoke(main, ["-o", "json", "doctor"], env={"KAITO_NVML_RECORDING": str(recording)})
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(result.output), dict)


def test_a_preset_named_like_a_command_is_an_option_value_not_the_command():
    result = CliRunner().invoke(main, ["--preset", "doctor", "--dry-run"])
    assert result.exit_code == 2
    assert "Unknown preset" in result.output or "doctor" in result.output
    assert "No GPU" not in result.output  # doctor did not run


def test_a_bad_request_creates_no_weights_folder(tmp_path):
    home = tmp_path / "home"
    for args in ([], ["--preset", "nope"], ["--model", "not a repo id!"]):
        result = CliRunner().invoke(main, args, env={"HOME": str(home), "HF_HOME": None, "KAITO_WEIGHTS_DIR": None})
        assert result.exit_code == 2, (args, result.output)
        assert not (home / ".cache").exists(), args


def test_the_version_comes_from_the_package_metadata(monkeypatch):
    import importlib
    import importlib.metadata

    import kaito_runtime

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.8.7" if name == "kaito-runtime" else "?")
    try:
        assert importlib.reload(kaito_runtime).__version__ == "9.8.7"
    finally:
        monkeypatch.undo()
        importlib.reload(kaito_runtime)


def test_catalog_errors_carry_file_preset_and_field_as_attributes_of_their_type():
    import inspect

    from kaito_runtime.errors import CatalogError

    assert {"path", "preset", "field"} <= set(inspect.signature(CatalogError).parameters)


@pytest.mark.parametrize("join", [True, False])
def test_a_leader_name_that_never_resolves_exits_21_naming_it(tmp_path, join):
    """docs/operations.md: 21 is the group that did not meet; a leader name that never resolves is
    one (the DNS record may come late, so it is waited for, never exit 2 "bad input")."""
    what = ["--join"] if join else ["--model", str(REPO / "models" / "tiny-llama"), "--nnodes", "2"]
    result = invoke(*what, "--node-rank", "1", "--leader-address", "no-such-leader.invalid", "--rendezvous-timeout", "1.5",
                    "--port", str(free_port()), "--metrics-port", "0",  # not this machine's 5000 and 5090
                    env={"HF_HOME": str(tmp_path / "hf"), "KAITO_WEIGHTS_DIR": str(tmp_path / "w")})
    assert result.exit_code == 21, result.output
    assert "'no-such-leader.invalid' did not resolve" in result.output

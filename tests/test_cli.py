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

from kaito_runtime.catalog import load_catalog
from kaito_runtime.cli import main

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
    assert "GiB" in result.output


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


def test_help_documents_every_option():
    result = invoke("serve", "--help")
    assert result.exit_code == 0
    for option in ("--preset", "--model", "--dry-run", "--sku", "--assume-gpus", "--max-model-len",
                   "--token-file", "--config", "--grace-period", "--port", "--download-only"):
        assert option in result.output


def test_doctor_reports_cleanly_without_gpu():
    result = CliRunner().invoke(main, ["doctor"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.exit_code == 0, result.output
    assert "GPU" in result.output


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
        pytest.skip("the kaito-run console script is not installed in this environment")
    return script


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


def test_wheel_ships_the_catalog(tmp_path):
    """`pip install .` puts presets/ inside the package: a wheel install run elsewhere finds them all."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to copy the tracked tree")
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    if build.returncode != 0 and "hatchling" in build.stderr:
        pytest.skip("hatchling is not installed for a no-isolation build")
    assert build.returncode == 0, build.stderr
    wheel = next(wheel_dir.glob("kaito_runtime-*.whl"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    assert (target / "kaito_runtime" / "presets" / "llama.yaml").is_file()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import json, kaito_runtime, kaito_runtime.data as d; from kaito_runtime.catalog import load_catalog;"
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

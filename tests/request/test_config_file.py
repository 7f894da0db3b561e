"""KAITO's inference config file (`--config`): its `vllm:` flags reach vLLM and win over the plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.ci import missing
from tests.support.steps import main
from kaito_runtime.request.config_file import ConfigFile, read_config
from kaito_runtime.errors import ConfigFileError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inference_config.yaml"
    path.write_text(text)
    return path


def test_reads_the_vllm_section_and_ignores_kaito_only_keys(tmp_path):
    path = write(tmp_path, "vllm:\n  max-model-len: 8192\n  --enforce-eager: true\nmax_probe_steps: 6\n")
    # keys as written: vllm_command spells the flags (with or without the dashes)
    assert read_config(path).vllm_args == {"max-model-len": 8192, "--enforce-eager": True}


def test_kaito_only_keys_are_returned_as_notes(tmp_path):
    path = write(tmp_path, "vllm:\n  max-num-seqs: 4\nmax_probe_steps: 6\nkv_cache_cpu_memory_utilization: 0.5\n")
    config = read_config(path)
    assert isinstance(config, ConfigFile)
    assert config.vllm_args == {"max-num-seqs": 4}
    assert len(config.notes) == 1
    assert any("max_probe_steps: 6" in note and "ignoring" in note for note in config.notes)
    assert config.kv_cache_cpu_memory_utilization == 0.5  # read: it sets CPU KV offload
    assert read_config(write(tmp_path, "vllm:\n  a: 1\n")).notes == ()


def test_unknown_top_level_keys_are_ignored_with_one_warning_naming_them(tmp_path):
    """KAITO ignores top-level keys it does not know; a future KAITO key must not crash-loop pods."""
    config = read_config(write(tmp_path, "vllm:\n  a: 1\nvlm:\n  b: 2\nfuture_kaito_key: true\n"))
    assert config.vllm_args == {"a": 1} and config.unknown_keys == ("future_kaito_key", "vlm")
    warning = config.unknown_keys_warning
    assert warning.count("ignoring") == 1 and "future_kaito_key, vlm" in warning
    assert read_config(write(tmp_path, "vllm:\n  a: 1\n")).unknown_keys_warning is None


@pytest.mark.parametrize("value", ["1.5", "-0.1", "half", "true", "[0.5]"])
def test_a_cpu_offload_utilization_outside_0_to_1_names_the_key(tmp_path, value):
    with pytest.raises(ConfigFileError) as caught:
        read_config(write(tmp_path, f"kv_cache_cpu_memory_utilization: {value}\n"))
    assert "kv_cache_cpu_memory_utilization" in str(caught.value) and caught.value.exit_code == 2


def test_mappings_and_lists_are_accepted(tmp_path):
    path = write(
        tmp_path,
        "vllm:\n  compilation-config: {level: 3, cudagraph_capture_sizes: [1, 2]}\n"
        "  served-model-name: [a, b]\n  speculative-config:\n    method: ngram\n    num_speculative_tokens: 4\n",
    )
    assert read_config(path).vllm_args == {
        "compilation-config": {"level": 3, "cudagraph_capture_sizes": [1, 2]},
        "served-model-name": ["a", "b"],
        "speculative-config": {"method": "ngram", "num_speculative_tokens": 4},
    }


def test_mappings_reach_vllm_as_json_and_lists_as_several_values(tmp_path):
    """End to end: YAML mapping -> one JSON argv value vLLM's JSON flags parse; list -> values."""
    path = write(
        tmp_path,
        "vllm:\n  compilation-config: {level: 3}\n  kv-transfer-config: {kv_role: kv_both, kv_buffer_size: 1e9, enabled: true}\n"
        "  served-model-name: [phi, phi-mini]\n  port: 5001\n",
    )
    result = CliRunner().invoke(
        main,
        ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json", "--config", str(path)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    argv = json.loads(result.output)["vllm"]["argv"]
    assert json.loads(argv[argv.index("--compilation-config") + 1]) == {"level": 3}
    assert json.loads(argv[argv.index("--kv-transfer-config") + 1]) == {"kv_role": "kv_both", "kv_buffer_size": "1e9", "enabled": True}
    i = argv.index("--served-model-name")
    assert argv[i + 1 : i + 3] == ["phi", "phi-mini"] and argv.count("--served-model-name") == 1
    assert argv[argv.index("--port") + 1] == "5001" and argv.count("--port") == 1


def test_empty_file_means_no_flags(tmp_path):
    assert read_config(write(tmp_path, "")).vllm_args == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("vllm: [1, 2]\n", "must be a mapping"),
        ("- a\n- b\n", "must be a mapping"),
        ("vllm:\n  served-model-name: []\n", "vllm.served-model-name to an empty list"),
        ("vllm:\n  speculative-config: {when: 2024-01-01}\n", "vllm.speculative-config to a value that is not plain JSON"),
        ("vllm: {a: 1\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        read_config(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("vllm: 5\n", "It holds a number."),
        ("vllm: [1, 2]\n", "It holds a list."),
        ("vllm: text\n", "It holds a string."),
        ("- a\n", "It holds a list."),
        ("42\n", "It holds a number."),
    ],
)
def test_wrong_shapes_are_named_in_words_and_sentences(tmp_path, text, why):
    with pytest.raises(ConfigFileError) as caught:
        read_config(write(tmp_path, text))
    message = str(caught.value)
    assert f". {why} Fix: " in message
    assert "a int" not in message


def test_yaml_error_reads_as_a_sentence(tmp_path):
    with pytest.raises(ConfigFileError) as caught:
        read_config(write(tmp_path, "vllm: {a: 1\n"))
    assert caught.value.why is not None and caught.value.why[:1].isupper()
    assert "is not valid YAML. While parsing" in str(caught.value)


def test_missing_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(
        main, ["--preset", "phi-4", "--dry-run", "--assume-gpus", "1xA100-80GB", "--config", str(tmp_path / "nope.yaml")]
    )
    assert result.exit_code == 2
    assert "nope.yaml" in result.output


def test_config_flags_win_over_the_plan_and_pass_through_wins_over_config(tmp_path):
    path = write(tmp_path, "vllm:\n  max-model-len: 8192\n  max-num-seqs: 9\n  cpu-offload-gb: 0\n")
    result = CliRunner().invoke(
        main,
        ["--preset", "phi-4-mini-instruct", "--dry-run", "--assume-gpus", "1xA100-80GB", "-o", "json",
         "--config", str(path), "--", "--max-num-seqs", "5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    argv = json.loads(result.output)["vllm"]["argv"]
    assert argv.count("--max-model-len") == 1 and argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv.count("--max-num-seqs") == 1 and argv[argv.index("--max-num-seqs") + 1] == "5"
    assert argv[argv.index("--cpu-offload-gb") + 1] == "0"


def test_container_entrypoint_passes_kaito_config_file(tmp_path):
    """entrypoints/kaito-entrypoint.sh: KAITO_CONFIG_FILE reaches kaito-run; arguments pass through."""
    path = write(tmp_path, "vllm:\n  max-num-seqs: 11\n")
    env = {**os.environ, "KAITO_CONFIG_FILE": str(path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if not (Path(sys.executable).parent / "kaito-run").exists():
        missing("the kaito-run console script is not installed in this environment (pip install -e .)")
    out = subprocess.run(
        ["sh", str(REPO / "entrypoints" / "kaito-entrypoint.sh"), "--preset", "phi-4-mini-instruct", "--dry-run",
         "--assume-gpus", "1xA100-80GB", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    argv = json.loads(out.stdout)["vllm"]["argv"]
    assert argv[argv.index("--max-num-seqs") + 1] == "11"

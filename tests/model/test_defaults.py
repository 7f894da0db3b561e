"""A hub model gets the defaults a built-in preset would carry: parsers from the architecture
and the family (presets/vllm/parsers.yaml, checked against the presets' own choices), the served
name from the id, and a dry run that shows the generated preset's every figure."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.errors import CatalogError
from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.model.defaults import choose_parsers, parser_rules
from tests.conftest import GRANTED_TOKEN
from tests.support.model_fixtures import FIXTURES

REPO = Path(__file__).resolve().parents[2]
_PARSER_FLAGS = ("tool-call-parser", "reasoning-parser")


def _parsers(args) -> dict[str, str | bool]:
    args = list(args)
    found: dict[str, str | bool] = {f: args[args.index(f"--{f}") + 1] for f in _PARSER_FLAGS if f"--{f}" in args}
    found["auto"] = "--enable-auto-tool-choice" in args
    return found


@pytest.mark.parametrize("preset", load_catalog().names())
def test_the_rules_give_every_built_in_preset_its_own_parsers(preset):
    """The presets are the reference: their repo id and architecture, run through the rules,
    give exactly the parsers the preset passes (phi-3, gemma-3, falcon, distills included)."""
    spec = load_catalog().get(preset)
    choice = choose_parsers(spec.architecture, spec.repo_id)
    assert _parsers(choice.vllm_args) == _parsers(spec.vllm_args)


def test_every_rule_names_its_reference():
    presets = set(load_catalog().names())
    for rule in parser_rules():
        assert rule.presets or rule.source
        assert set(rule.presets) <= presets, rule.presets


def test_a_family_rule_is_not_a_name_prefix_rule():
    # Phi3ForCausalLM: only Phi-4-mini has a tool parser; phi-3 and phi-4 share the architecture.
    assert choose_parsers("Phi3ForCausalLM", "microsoft/Phi-4-mini-reasoning").tool_call_parser == "phi4_mini_json"
    assert choose_parsers("Phi3ForCausalLM", "microsoft/phi-4").vllm_args == ()
    # A fine-tune of Llama 3 under another org gets no Llama tool parser from its name.
    assert choose_parsers("LlamaForCausalLM", "someone/Llama-3-finetune").vllm_args == ()
    assert choose_parsers("Qwen3ForCausalLM", "Qwen/Qwen3-8B").vllm_args == (
        "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3", "--enable-auto-tool-choice")


def test_a_bad_rules_file_is_a_catalog_error(tmp_path):
    bad = tmp_path / "parsers.yaml"
    bad.write_text("rules:\n  - tool_call_parser: hermes\n")
    with pytest.raises(CatalogError, match="matches nothing"):
        choose_parsers("X", None, bad)
    bad.write_text("rules:\n  - architecture: X\n    tool_call_parsr: hermes\n")
    with pytest.raises(CatalogError, match="Invalid parser rules file"):
        choose_parsers("X", None, bad)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_every_parser_in_the_rules_is_registered_in_the_installed_vllm():
    tools = sorted({r.tool_call_parser for r in parser_rules() if r.tool_call_parser})
    reasoning = sorted({r.reasoning_parser for r in parser_rules() if r.reasoning_parser})
    code = (
        "import json\n"
        "from vllm.tool_parsers import ToolParserManager\n"
        "from vllm.reasoning import ReasoningParserManager\n"
        "def names(m):\n"
        "    out = set()\n"
        "    for attr in ('tool_parsers', 'reasoning_parsers', 'lazy_parsers'):\n"
        "        out |= set(getattr(m, attr, {}) or {})\n"
        "    return sorted(out)\n"
        "print(json.dumps([names(ToolParserManager), names(ReasoningParserManager)]))\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "kaito_runtime" / "launch" / "amx_site"), env.get("PYTHONPATH", "")) if p)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    known_tools, known_reasoning = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(tools) <= set(known_tools), set(tools) - set(known_tools)
    assert set(reasoning) <= set(known_reasoning), set(reasoning) - set(known_reasoning)


# ------------------------------------------------------------------------------------------------
# Through the CLI, against the hub emulator
# ------------------------------------------------------------------------------------------------


def _dry_run(hub, tmp_path, repo_id, *extra, token=None, output="json"):
    env = {"HF_ENDPOINT": hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w"), "HF_HOME": str(tmp_path / "hf")}
    if token:
        env["HF_TOKEN"] = token
    args = ["--preset", repo_id, "--dry-run", "-o", output, "--assume-gpus", "8xH100-80GB", *extra]
    return CliRunner().invoke(main, args, env=env)


EXPECTED_PARSERS = {
    "llama": {"tool-call-parser": "llama3_json", "auto": True},
    "qwen3": {"tool-call-parser": "hermes", "reasoning-parser": "qwen3", "auto": True},
    "moe": {"tool-call-parser": "hermes", "reasoning-parser": "qwen3", "auto": True},
    "fp8": {"tool-call-parser": "hermes", "reasoning-parser": "qwen3", "auto": True},
    "awq": {"tool-call-parser": "hermes", "auto": True},
    "mistral": {"tool-call-parser": "mistral", "auto": True},
    "gemma3": {"auto": False},
    "mla": {"auto": False},
    "bin-only": {"auto": False},
}


@pytest.mark.parametrize("key", sorted(EXPECTED_PARSERS))
def test_a_hub_model_gets_parsers_and_its_served_name_from_the_id(fixture_hub, tmp_path, key):
    fx = FIXTURES[key]
    result = _dry_run(fixture_hub, tmp_path, fx.repo_id, token=GRANTED_TOKEN if fx.gated else None)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert _parsers(payload["model"]["vllm_args"]) == EXPECTED_PARSERS[key]
    argv = payload["vllm"]["argv"]
    assert _parsers(argv) == EXPECTED_PARSERS[key]
    served = fx.repo_id.rsplit("/", 1)[1].lower()
    assert payload["model"]["name"] == served
    assert argv[argv.index("--served-model-name") + 1] == served
    assert payload["model"]["notes"].startswith("parsers: ")


def test_the_text_dry_run_shows_the_generated_preset_with_every_figure(fixture_hub, tmp_path):
    result = _dry_run(fixture_hub, tmp_path, "google/gemma-3-1b-it", output="text")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "generated from hub metadata" in out
    assert "Gemma3ForCausalLM, weights" in out and "context 32,768" in out and "KV 26,624 B/token" in out
    assert "parameters 999,885,952" in out
    assert "attention 26 layers, 4 heads, 1 KV heads x head_dim 256" in out
    assert "sliding window 512 on 22 of 26 layers" in out and "vocab 262,144, hidden 1,152" in out
    assert "parsers: none (no rule matches in presets/vllm/parsers.yaml)" in out


def test_a_pass_through_parser_wins_over_the_default(fixture_hub, tmp_path):
    result = _dry_run(fixture_hub, tmp_path, "Qwen/Qwen3-0.6B", "--", "--tool-call-parser", "qwen3_coder")
    assert result.exit_code == 0, result.output
    argv = json.loads(result.stdout)["vllm"]["argv"]
    assert argv.count("--tool-call-parser") == 1
    assert argv[argv.index("--tool-call-parser") + 1] == "qwen3_coder"

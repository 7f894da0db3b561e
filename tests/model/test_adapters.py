"""LoRA adapters (--adapters-dir / KAITO_ADAPTERS_DIR): found, checked before vLLM starts, and
turned into --enable-lora --lora-modules name=path --max-lora-rank R; a preset that disallows LoRA
refuses them with exit 2. Unit tests of model/adapters.py and launch's lora_tokens, then dry runs
through the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.errors import InputError
from tests.support.steps import MAX_LORA_RANKS, lora_tokens
from kaito_runtime.model import adapters as lora
from kaito_runtime.model.catalog import load_catalog
from kaito_runtime.types import LoraAdapter

PHI = load_catalog().get("phi-4-mini-instruct")


def make_adapter(root: Path, name: str, config: object, weights: str | None = "adapter_model.safetensors") -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "adapter_config.json").write_text(text)
    if weights:
        (folder / weights).write_bytes(b"\0")
    return folder


def test_every_subfolder_with_a_config_is_an_adapter_named_after_it(tmp_path):
    make_adapter(tmp_path, "b-sql", {"peft_type": "LORA", "r": 16, "base_model_name_or_path": PHI.repo_id})
    make_adapter(tmp_path, "a-chat", {"r": 64}, weights="adapter_model.bin")
    (tmp_path / "readme-only").mkdir()
    (tmp_path / "readme-only" / "README.md").write_text("x")
    (tmp_path / "..data").mkdir()  # a ConfigMap's hidden folder
    (tmp_path / "stray.txt").write_text("x")
    scan = lora.find_adapters(tmp_path)
    assert [(a.name, a.rank, a.base_model) for a in scan.adapters] == [("a-chat", 64, None), ("b-sql", 16, PHI.repo_id)]
    assert scan.adapters[0].path == str(tmp_path / "a-chat")
    assert any("readme-only" in n and "skipped" in n for n in scan.notes)
    assert not any("..data" in n or "stray" in n for n in scan.notes)


def test_a_missing_rank_takes_pefts_default_with_a_note(tmp_path):
    make_adapter(tmp_path, "x", {"peft_type": "LORA"})
    scan = lora.find_adapters(tmp_path)
    assert scan.adapters[0].rank == lora.PEFT_DEFAULT_RANK == 8
    assert any("default 8" in n for n in scan.notes)


def test_an_empty_folder_serves_the_model_alone(tmp_path):
    scan = lora.find_adapters(tmp_path)
    assert scan.adapters == () and "no LoRA adapters" in scan.notes[-1]
    assert lora.check_adapters(scan, replace(PHI, lora_allowed=False)) == ()  # nothing to refuse


@pytest.mark.parametrize(
    ("config", "weights", "expected"),
    [
        ("{not json", "adapter_model.safetensors", "is not valid JSON"),
        ("[1, 2]", "adapter_model.safetensors", "must be a JSON object"),
        ({"r": 0}, "adapter_model.safetensors", "rank r=0"),
        ({"r": "16"}, "adapter_model.safetensors", "rank r='16'"),
        ({"r": True}, "adapter_model.safetensors", "rank r=True"),
        ({"peft_type": "IA3", "r": 8}, "adapter_model.safetensors", "IA3 adapter, not LoRA"),
        ({"r": 8}, None, "has no weights"),
    ],
)
def test_a_broken_adapter_is_refused_naming_its_file(tmp_path, config, weights, expected):
    folder = make_adapter(tmp_path, "bad", config, weights=weights)
    with pytest.raises(InputError) as info:
        lora.find_adapters(tmp_path)
    assert expected in info.value.message
    assert str(folder) in info.value.message
    assert info.value.exit_code == 2


def test_a_missing_adapters_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        lora.find_adapters(tmp_path / "nope")


@pytest.mark.parametrize(
    "base",
    ["microsoft/Phi-4-mini-instruct", "MICROSOFT/phi-4-mini-instruct", "phi-4-mini-instruct",
     "/models/Phi-4-mini-instruct/", "/workspace/weights/microsoft/Phi-4-mini-instruct"],
)
def test_a_base_model_naming_the_served_model_is_not_warned_about(tmp_path, base):
    make_adapter(tmp_path, "ok", {"r": 8, "base_model_name_or_path": base})
    assert lora.check_adapters(lora.find_adapters(tmp_path), PHI) == ()


def test_another_base_model_is_a_warning_naming_both(tmp_path):
    make_adapter(tmp_path, "llama-tuned", {"r": 8, "base_model_name_or_path": "meta-llama/Llama-3.1-8B"})
    (warning,) = lora.check_adapters(lora.find_adapters(tmp_path), PHI)
    assert "llama-tuned" in warning and "meta-llama/Llama-3.1-8B" in warning and PHI.repo_id in warning


def test_a_preset_that_disallows_lora_refuses_adapters(tmp_path):
    falcon = load_catalog().get("falcon-7b")
    assert falcon.lora_allowed is False and PHI.lora_allowed is True
    make_adapter(tmp_path, "one", {"r": 8})
    with pytest.raises(InputError) as info:
        lora.check_adapters(lora.find_adapters(tmp_path), falcon)
    assert info.value.exit_code == 2
    assert "falcon-7b does not allow LoRA" in info.value.message and "one" in info.value.message


def _adapter(name: str, rank: int, path: str | None = None) -> LoraAdapter:
    return LoraAdapter(name=name, path=path or f"/mnt/adapter/{name}", rank=rank)


def test_lora_tokens_name_each_module_and_round_the_largest_rank_up_to_one_vllm_takes():
    tokens, warnings = lora_tokens([_adapter("a", 8), _adapter("b", 24)])
    assert tokens == ["--enable-lora", "--lora-modules", "a=/mnt/adapter/a", "b=/mnt/adapter/b", "--max-lora-rank", "32"]
    assert warnings == []
    assert lora_tokens([_adapter("a", 320)])[0][-1] == "320"
    assert lora_tokens([]) == ([], [])


def test_lora_tokens_use_json_where_name_equals_path_cannot_carry_it():
    tokens, _ = lora_tokens([_adapter("a=b", 8), _adapter("c", 8, "/mnt/x,y")])
    assert json.loads(tokens[2]) == {"name": "a=b", "path": "/mnt/adapter/a=b"}
    assert json.loads(tokens[3]) == {"name": "c", "path": "/mnt/x,y"}


def test_a_rank_above_vllms_largest_is_warned_about():
    tokens, warnings = lora_tokens([_adapter("huge", 1024)])
    assert tokens[-1] == str(MAX_LORA_RANKS[-1])
    assert "1024" in warnings[0]


# -- through the CLI ---------------------------------------------------------------------------


def dry_run_json(*args: str, env: dict[str, str] | None = None):
    result = CliRunner().invoke(main, ["--dry-run", "-o", "json", "--sku", "Standard_NC24ads_A100_v4", *args], env=env)
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def test_dry_run_serves_the_adapters_and_checks_them_before_vllm(tmp_path):
    make_adapter(tmp_path, "sql", {"r": 16, "base_model_name_or_path": PHI.repo_id})
    make_adapter(tmp_path, "chat", {"r": 64, "base_model_name_or_path": "someone/else"})
    result, plan = dry_run_json("--preset", "phi-4-mini-instruct", env={"KAITO_ADAPTERS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    argv = plan["vllm"]["argv"]
    i = argv.index("--lora-modules")
    assert "--enable-lora" in argv
    assert argv[i + 1 : i + 3] == [f"chat={tmp_path / 'chat'}", f"sql={tmp_path / 'sql'}"]
    assert argv[argv.index("--max-lora-rank") + 1] == "64"
    assert [a["name"] for a in plan["adapters"]] == ["chat", "sql"]
    assert any("someone/else" in w for w in plan["warnings"])


def test_a_users_max_lora_rank_wins(tmp_path):
    make_adapter(tmp_path, "sql", {"r": 16})
    result, plan = dry_run_json("--preset", "phi-4-mini-instruct", "--adapters-dir", str(tmp_path), "--", "--max-lora-rank", "128")
    assert result.exit_code == 0, result.output
    argv = plan["vllm"]["argv"]
    assert argv.count("--max-lora-rank") == 1 and argv[argv.index("--max-lora-rank") + 1] == "128"


def test_dry_run_of_a_preset_that_disallows_lora_exits_2(tmp_path):
    make_adapter(tmp_path, "sql", {"r": 16})
    result, _ = dry_run_json("--preset", "falcon-7b", "--adapters-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "falcon-7b does not allow LoRA adapters" in result.output


def test_a_broken_adapter_exits_2_in_a_dry_run(tmp_path):
    make_adapter(tmp_path, "sql", "{broken")
    result, _ = dry_run_json("--preset", "phi-4-mini-instruct", "--adapters-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "adapter_config.json is not valid JSON" in result.output


def test_no_adapters_dir_no_lora_flags():
    result, plan = dry_run_json("--preset", "phi-4-mini-instruct")
    assert result.exit_code == 0, result.output
    assert "--enable-lora" not in plan["vllm"]["argv"] and plan["adapters"] == []


# -- folder names vLLM would read as options (issue 18, item 2) ----------------------------------


@pytest.mark.parametrize("name", ["--api-key", "--port", "-tp", "--host=0.0.0.0", "--api"])
def test_an_adapter_folder_named_like_an_option_stays_an_adapter_name(tmp_path, name):
    """A folder named --api-key once became `--api-key=PATH` on vLLM's command line: vLLM's key
    was set and the adapter vanished. Such a name goes in --lora-modules' JSON form, which no
    parser reads as an option, and the log says so."""
    from kaito_runtime import vllm_flags

    make_adapter(tmp_path, name, {"r": 8})
    make_adapter(tmp_path, "plain", {"r": 8})
    result, plan = dry_run_json("--preset", "phi-4-mini-instruct", env={"KAITO_ADAPTERS_DIR": str(tmp_path)})
    assert result.exit_code == 0, result.output
    argv = plan["vllm"]["argv"]
    flags = vllm_flags.group(argv[argv.index("--lora-modules"):])
    assert [f.name for f in flags][:2] == ["lora-modules", "max-lora-rank"], flags
    modules = flags[0].values
    assert not any(token.startswith("-") for token in modules)
    # (paths compared by their ends: earlier in-process tests may have registered secrets that mask parts)
    as_json = [json.loads(t) for t in modules if t.startswith("{")]
    assert [m["name"] for m in as_json] == [name] and as_json[0]["path"].endswith(f"/{name}")
    assert any(t.startswith("plain=") and t.endswith("/plain") for t in modules)
    assert "api-key" not in vllm_flags.flag_names(argv)
    assert name in result.output and "JSON" in result.output


def test_an_option_like_adapter_name_reads_back_as_one_module_in_an_argparse_parser(tmp_path):
    """The shape vLLM's parser has: --lora-modules takes one or more values, --api-key exists,
    abbreviations are allowed; every module token must land in --lora-modules."""
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--lora-modules", nargs="+")
    parser.add_argument("--api-key")
    parser.add_argument("--max-lora-rank")
    tokens, _ = lora_tokens([_adapter("--api-key", 8), _adapter("--api", 8), _adapter("ok", 8)])
    parsed = parser.parse_args(tokens[1:])
    assert parsed.api_key is None
    assert len(parsed.lora_modules) == 3

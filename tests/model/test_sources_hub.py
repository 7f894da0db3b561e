"""KAITO's preset syntax: `--preset` / KAITO_PRESET take a built-in name or a Hugging Face id
(org/name, optionally @revision), through the CLI against the hub emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.support.steps import main
from kaito_runtime.model.catalog import load_catalog


def _dry_run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["--dry-run", "-o", "json", "--assume-gpus", "1xA100-80GB", *args], env=env)


def _model(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["model"]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_hub_id_as_the_preset_is_read_from_the_hub(tiny_hub, tmp_path, how):
    env = {"HF_ENDPOINT": tiny_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")}
    if how == "flag":
        result = _dry_run("--preset", "org/tiny-llama", env=env)
    else:
        result = _dry_run(env={**env, "KAITO_PRESET": "org/tiny-llama"})
    model = _model(result)
    assert model["repo_id"] == "org/tiny-llama" and model["name"] == "tiny-llama"
    assert model["revision"] == tiny_hub.commit_of("org/tiny-llama")
    assert tiny_hub.count(kind="model_info") >= 1


def test_a_revision_after_at_pins_that_commit(tiny_hub, tmp_path):
    commit = tiny_hub.commit_of("org/tiny-llama")
    env = {"HF_ENDPOINT": tiny_hub.url, "KAITO_WEIGHTS_DIR": str(tmp_path / "w")}
    assert _model(_dry_run("--preset", f"org/tiny-llama@{commit}", env=env))["revision"] == commit
    assert _model(_dry_run(env={**env, "KAITO_PRESET": "org/tiny-llama@main"}))["revision"] == commit
    # A revision the repo does not have is the hub's answer (exit 15), so the '@' part was used.
    assert _dry_run("--preset", "org/tiny-llama@no-such-branch", env=env).exit_code == 15


def test_two_revisions_or_an_empty_one_are_refused(tiny_hub, tmp_path):
    env = {"HF_ENDPOINT": tiny_hub.url}
    both = _dry_run("--preset", "org/tiny-llama@v1", "--revision", "v2", env=env)
    assert both.exit_code == 2 and "two revisions" in both.output
    empty = _dry_run("--preset", "org/tiny-llama@", env=env)
    assert empty.exit_code == 2 and "empty revision" in empty.output
    assert tiny_hub.count() == 0


def test_a_malformed_id_is_a_repo_id_error_before_any_request(tiny_hub):
    result = _dry_run("--preset", "org/bad id", env={"HF_ENDPOINT": tiny_hub.url})
    assert result.exit_code == 2 and "is not a valid Hugging Face repo id" in result.output
    assert tiny_hub.count() == 0


@pytest.mark.parametrize("spelled", ["microsoft/Phi-4-mini-instruct", "MICROSOFT/phi-4-mini-instruct"])
def test_a_built_in_presets_own_repo_id_is_that_preset(tiny_hub, spelled):
    preset = load_catalog().get("phi-4-mini-instruct")
    model = _model(_dry_run("--preset", spelled, env={"HF_ENDPOINT": tiny_hub.url}))
    assert (model["name"], model["revision"], model["family"]) == (preset.name, preset.revision, preset.family)
    assert tiny_hub.count() == 0  # the preset's figures: nothing asked of the hub
    # The preset's own pin after '@' is still the preset; another revision is any hub model.
    pinned = _model(_dry_run("--preset", f"{spelled}@{preset.revision}", env={"HF_ENDPOINT": tiny_hub.url}))
    assert pinned["name"] == preset.name


def test_an_unknown_name_gets_three_close_names_and_the_hub_id_form():
    result = CliRunner().invoke(main, ["--preset", "qwen3-coder", "--dry-run"])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    assert "or use a hugging face id such as qwen/qwen3-0.6b" in line.lower()
    names = [n for n in load_catalog().names() if n in line]
    assert 1 <= len(names) <= 3 and "qwen2.5-coder-7b-instruct" in names, line


def test_a_name_nothing_resembles_gets_no_list_of_every_preset():
    result = CliRunner().invoke(main, ["--preset", "zzzz", "--dry-run"])
    assert result.exit_code == 2
    assert [n for n in load_catalog().names() if n in result.output] == [], result.output
    assert "--list-presets" in result.output and "Qwen/Qwen3-0.6B" in result.output


def test_a_dry_run_of_a_hub_id_writes_nothing(tiny_hub, tmp_path):
    """Issue 11 item 7: no weights folder, no refs, nothing in HF_HOME."""
    wdir, hf_home = tmp_path / "w", tmp_path / "hf-home"
    env = {"HF_ENDPOINT": tiny_hub.url, "KAITO_WEIGHTS_DIR": str(wdir), "HF_HOME": str(hf_home)}
    for args in (["--preset", "org/tiny-llama"], ["--model", "org/tiny-llama", "--revision", "main"]):
        _model(_dry_run(*args, env=env))
        assert not wdir.exists(), sorted(Path(wdir).rglob("*"))
        assert not hf_home.exists() or not any(hf_home.rglob("*")), sorted(hf_home.rglob("*"))

"""kaito_runtime.model: which model a request names, for serving and for --download-only."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaito_runtime import model
from kaito_runtime.errors import InputError
from kaito_runtime.model.catalog import load_catalog
from tests.support.steps import ModelRequest as RuntimeRequest

TINY = Path(__file__).resolve().parents[2] / "models" / "tiny-llama"


def resolve_model(request: RuntimeRequest):
    """The model step as the API runs it: the slice checked when settled, then resolved."""
    catalog = load_catalog()
    return model.resolve_model(model.checked(request, catalog), catalog)


def download_source(request: RuntimeRequest):
    catalog = load_catalog()
    return model.download_source(model.checked(request, catalog), catalog)


def test_revision_with_a_preset_is_refused_unless_it_is_the_pin():
    spec = resolve_model(RuntimeRequest(preset="phi-4-mini-instruct"))
    with pytest.raises(InputError) as caught:
        resolve_model(RuntimeRequest(preset="phi-4-mini-instruct", revision="main"))
    message = caught.value.message
    assert f"pins {spec.repo_id} at commit {spec.revision}" in message
    assert f"--model {spec.repo_id} --revision main" in message
    same = resolve_model(RuntimeRequest(preset="phi-4-mini-instruct", revision=spec.revision))
    assert same.revision == spec.revision


def test_revision_with_a_local_folder_is_refused():
    with pytest.raises(InputError, match="local folder"):
        resolve_model(RuntimeRequest(model=str(TINY), revision="v1"))
    with pytest.raises(InputError, match="local folder"):
        download_source(RuntimeRequest(model=str(TINY), revision="v1"))


@pytest.mark.parametrize("resolve", [resolve_model, download_source])
def test_no_model_or_both_are_refused(resolve):
    with pytest.raises(InputError, match="No model given"):
        resolve(RuntimeRequest())
    with pytest.raises(InputError, match="Both --preset and --model"):
        resolve(RuntimeRequest(preset="phi-4-mini-instruct", model="org/x"))


def test_a_presets_repo_id_is_the_preset():
    preset = load_catalog().get("phi-4-mini-instruct")
    assert resolve_model(RuntimeRequest(model=preset.repo_id)) == preset
    assert download_source(RuntimeRequest(model=preset.repo_id)) == preset.weights_source


def test_served_model_name_renames_for_serving():
    assert resolve_model(RuntimeRequest(model=str(TINY), served_model_name="mine")).name == "mine"


def test_download_source_of_a_repo_id_reads_nothing():
    spec = download_source(RuntimeRequest(model="Some-Org/Some-Model", revision="v2"))
    assert (spec.repo_id, spec.revision, spec.load_format, spec.name) == ("Some-Org/Some-Model", "v2", "hf", "some-model")
    assert spec.local_path is None


def test_download_source_of_a_folder_and_a_preset_are_the_real_ones():
    assert download_source(RuntimeRequest(model=str(TINY))).local_path == str(TINY.resolve())
    assert download_source(RuntimeRequest(preset="phi-4-mini-instruct")) == load_catalog().get("phi-4-mini-instruct").weights_source


def test_the_gated_warning_names_where_tokens_are_looked_for_and_only_without_one():
    from dataclasses import replace

    from kaito_runtime.model.catalog import load_catalog
    from kaito_runtime.model import gated_token_warning

    gated = next(p for p in load_catalog().presets if p.gated)
    text = gated_token_warning(gated, token_found=False)
    assert text == (
        f"{gated.repo_id} is gated: a Hugging Face token with access is needed (HF_TOKEN or --token-file); none found"
    )
    assert gated_token_warning(gated, token_found=True) is None
    assert gated_token_warning(replace(gated, gated=False), token_found=False) is None

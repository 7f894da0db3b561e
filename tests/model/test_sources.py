"""kaito_runtime.model.sources: local folders and hub ids as models; one weight-file rule for folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaito_runtime.errors import InputError
from kaito_runtime.model.files import WEIGHT_FILES_RULE, has_weights, weight_files
from kaito_runtime.model.sources import (
    check_repo_id,
    folder_weights_bytes,
    remote_metadata,
    served_name_for,
    spec_from_folder,
    spec_from_hub,
)


from tests.support.steps import ensure_weights
from tests.support.weights_helpers import spec

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_size": 64,
    "max_position_embeddings": 512,
    "torch_dtype": "bfloat16",
}


def _folder(root: Path, files: dict[str, int]) -> Path:
    """A model folder with config.json and the given files (name -> size in bytes)."""
    folder = root / "my-Model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(CONFIG))
    for name, size in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"w" * size)
    return folder


# (files in the folder, bytes of what vLLM loads)
CASES = {
    "hf shards over consolidated and bin": (
        {"model-00001-of-00002.safetensors": 100, "model-00002-of-00002.safetensors": 50,
         "model.safetensors.index.json": 7, "consolidated.safetensors": 140, "pytorch_model.bin": 1000},
        150,
    ),
    "consolidated only": ({"consolidated.safetensors": 140, "params.json": 5}, 140),
    "bin without safetensors": ({"pytorch_model.bin": 300, "pytorch_model.bin.index.json": 9, "extra.pt": 77}, 300),
    "pt only (vLLM never loads *.pth)": ({"consolidated.00.pth": 80, "other.pt": 20}, 20),
    "copies below the top level do not count": ({"original/model.safetensors": 500, "model.safetensors": 30}, 30),
}


@pytest.mark.parametrize("files, expected", CASES.values(), ids=CASES.keys())
def test_folder_weights_bytes_counts_one_format(tmp_path, files, expected):
    assert folder_weights_bytes(_folder(tmp_path, files)) == expected


@pytest.mark.parametrize("files, expected", CASES.values(), ids=CASES.keys())
def test_folder_size_sizes_the_spec_and_the_weights_step_accepts_the_same_folder(tmp_path, files, expected):
    folder = _folder(tmp_path, files)
    model = spec_from_folder(folder, sizes=False)  # the files here are not real safetensors
    assert model.weights_bytes == expected and model.local_path == str(folder.resolve())
    result = ensure_weights(spec(None, local_path=str(folder)), weights_dir=tmp_path / "w", token=None)
    assert result.path == folder and result.reused


def test_folder_prefers_consolidated_for_the_mistral_load_format(tmp_path):
    folder = _folder(tmp_path, {"model.safetensors": 100, "consolidated.safetensors": 140})
    assert folder_weights_bytes(folder, "mistral") == 140
    assert folder_weights_bytes(folder) == 100


NO_WEIGHTS = {
    "index only": {"model.safetensors.index.json": 10},
    "weights only in a subfolder": {"original/consolidated.00.pth": 80, "original/model.safetensors": 50},
    "pth only": {"consolidated.00.pth": 80},
    "nothing": {},
}


@pytest.mark.parametrize("files", NO_WEIGHTS.values(), ids=NO_WEIGHTS.keys())
def test_a_folder_without_loadable_weights_is_refused_the_same_way_everywhere(tmp_path, files):
    folder = _folder(tmp_path, files)
    with pytest.raises(InputError) as planned:
        spec_from_folder(folder)
    with pytest.raises(InputError) as fetched:
        ensure_weights(spec(None, local_path=str(folder)), weights_dir=tmp_path / "w", token=None)
    for info in (planned, fetched):
        assert "holds no weight files" in str(info.value)
        assert WEIGHT_FILES_RULE in str(info.value)


def test_the_rule_itself():
    names = ["config.json", "model.safetensors", "consolidated.safetensors", "pytorch_model.bin", "x.pt"]
    assert weight_files(names) == ["model.safetensors"]
    assert weight_files(names, "mistral") == ["consolidated.safetensors"]
    assert weight_files(["a.bin", "b.pt"]) == ["a.bin"]
    assert weight_files(["b.pt", "c.pth", "sub/a.bin"]) == ["b.pt"]
    assert has_weights(["b.pt"]) and not has_weights(["c.pth", "sub/a.bin", "model.safetensors.index.json"])


def test_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        spec_from_folder(tmp_path / "nope")


def test_served_name_is_the_lower_cased_last_part():
    assert served_name_for("Org/My-Model") == "my-model"
    assert served_name_for("/models/Tiny/") == "tiny"


@pytest.mark.parametrize("offline", [False, True])
@pytest.mark.parametrize("text", ["has space/x", "a/b/c", "-a/b", "a/", "org/" + "n" * 97, "a/b..c"])
def test_malformed_repo_id_is_bad_input_before_any_request(hub, hub_env, tmp_path, text, offline):
    with pytest.raises(InputError) as info:
        remote_metadata(text, revision=None, token=None, endpoint=hub.url, offline=offline)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert repr(text) in msg and "org/name" in msg and "letters, digits" in msg
    assert hub.count() == 0


def test_well_formed_repo_id_reads_the_hub(tiny_hub, tmp_path):
    remote = remote_metadata("org/tiny-llama", revision=None, token=None, endpoint=tiny_hub.url, offline=False)
    model = spec_from_hub("org/tiny-llama", remote)
    assert model.repo_id == "org/tiny-llama" and model.revision == tiny_hub.commit_of("org/tiny-llama")
    assert model.name == "tiny-llama" and tiny_hub.count() > 0


def test_check_repo_id_is_exposed_here_for_the_entry_points():
    check_repo_id("my-org/my-model")
    with pytest.raises(InputError, match="'has space/x' is not a valid Hugging Face repo id"):
        check_repo_id("has space/x")

"""kaito_runtime.model.files: which repo files a server needs (pure)."""

from __future__ import annotations

from kaito_runtime.model.files import has_weights, select_files

REPO_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "chat_template.jinja", "preprocessor_config.json", "README.md", ".gitattributes",
    "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json",
    "pytorch_model-00001-of-00002.bin", "pytorch_model.bin.index.json",
    "consolidated.safetensors", "params.json", "tekken.json",
    "original/consolidated.00.pth", "original/model.safetensors", "metal/model.bin",
]


def test_select_hf_format_takes_top_level_hf_shards_only():
    got = select_files(REPO_FILES, "hf")
    assert "model-00001-of-00002.safetensors" in got and "model.safetensors.index.json" in got
    assert "chat_template.jinja" in got and "tokenizer.model" in got and "preprocessor_config.json" in got
    for skipped in ("consolidated.safetensors", "pytorch_model-00001-of-00002.bin", "original/model.safetensors",
                    "metal/model.bin", "README.md", "params.json", "tekken.json"):
        assert skipped not in got


def test_select_mistral_format_takes_consolidated_and_not_hf_shards():
    got = select_files(REPO_FILES, "mistral")
    assert {"consolidated.safetensors", "params.json", "tekken.json", "tokenizer.json"} <= set(got)
    assert not any(p.startswith("model-") or p == "model.safetensors.index.json" for p in got)


def test_select_mistral_format_falls_back_to_hf_shards_without_consolidated():
    files = ["config.json", "params.json", "model.safetensors", "original/consolidated.safetensors"]
    assert select_files(files, "mistral") == ["config.json", "model.safetensors", "params.json"]


def test_select_falls_back_to_bin_only_without_safetensors():
    files = ["config.json", "pytorch_model.bin", "original/model.safetensors"]
    assert select_files(files, "hf") == ["config.json", "pytorch_model.bin"]


def test_has_weights():
    assert has_weights(["config.json", "model.safetensors"])
    assert has_weights(["quantized.pt"])
    assert not has_weights(["consolidated.00.pth"])  # vLLM's loader never globs *.pth
    assert not has_weights(["config.json", "model.safetensors.index.json", "README.md"])


def test_select_hf_format_takes_consolidated_when_it_is_the_only_safetensors_copy():
    files = ["config.json", "consolidated.safetensors", "consolidated.safetensors.index.json", "pytorch_model.bin"]
    assert select_files(files, "hf") == ["config.json", "consolidated.safetensors", "consolidated.safetensors.index.json"]


def test_select_takes_the_index_of_the_chosen_copy_only():
    files = ["model.safetensors", "model.safetensors.index.json", "consolidated.safetensors",
             "consolidated.safetensors.index.json", "pytorch_model.bin.index.json"]
    assert select_files(files, "hf") == ["model.safetensors", "model.safetensors.index.json"]
    assert select_files(files, "mistral") == ["consolidated.safetensors", "consolidated.safetensors.index.json"]


def test_select_and_has_weights_follow_the_same_rule_as_local_folders():
    files = ["config.json", "a.pth", "b.pt"]
    assert select_files(files) == ["b.pt", "config.json"] and has_weights(files)
    assert not has_weights(["original/model.safetensors"])  # other copies below the top level never count

"""Which files of a model repo a server needs, by load format (pure: names in, names out)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

# Small top-level files a server needs besides the weights.
_SUPPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "*.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "*.py",  # remote code, for models that need trust_remote_code
)
_MISTRAL_SUPPORT = ("params.json", "tekken.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_files(paths: Iterable[str], load_format: str = "hf") -> list[str]:
    """The repo files to fetch for a load format.

    Weights come from the top level only (``original/``, ``metal/`` … hold other copies).
    ``hf``: the HF-format ``*.safetensors`` shards and their index, never ``consolidated*``; ``*.bin``
    only when no safetensors exist. ``mistral``: ``consolidated*.safetensors``, ``params.json``,
    ``tekken.json`` and no HF shards (HF shards when the repo has no consolidated file).
    """
    top = sorted(p for p in set(paths) if "/" not in p)
    support = [p for p in top if _matches(p, _SUPPORT_PATTERNS)]
    st = [p for p in top if p.endswith((".safetensors", ".safetensors.index.json"))]
    consolidated = [p for p in st if p.startswith("consolidated")]
    hf_shards = [p for p in st if not p.startswith("consolidated")]
    if load_format == "mistral" and any(p.endswith(".safetensors") for p in consolidated):
        weights = consolidated
    elif any(p.endswith(".safetensors") for p in hf_shards):
        weights = hf_shards
    else:
        weights = [p for p in top if p.endswith(".bin") or p.endswith(".bin.index.json")]
    if load_format == "mistral":
        support += [p for p in top if p in _MISTRAL_SUPPORT]
    return sorted(set(support) | set(weights))


def has_weights(names: Iterable[str]) -> bool:
    """Whether any of ``names`` is a weight file vLLM can load."""
    return any(n.endswith(WEIGHT_SUFFIXES) for n in names)

"""Which files of a model repo or folder a server needs, by load format, and the one rule for a
local model folder: the model step sizes the model by them, the weights step fetches and checks
by them (its one import of this step)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from kaito_runtime.errors import InputError

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

# The rule of ``weight_files`` in words, for error messages.
WEIGHT_FILES_RULE = (
    "top-level *.safetensors (HF shards before consolidated*), else *.bin, else *.pt"
)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _is_consolidated(name: str) -> bool:
    return name.startswith("consolidated")


def weight_files(names: Iterable[str], load_format: str = "hf") -> list[str]:
    """The one weight format vLLM loads among ``names`` (a repo's paths or a folder's file names).

    The single rule for downloads, local folders, sizes and error texts: top level only
    (``original/``, ``metal/`` … hold other copies); ``*.safetensors`` first, and among them the HF
    shards over ``consolidated*`` (the Mistral-native copy), except that load format ``mistral``
    prefers ``consolidated*``; without safetensors ``*.bin``; without either ``*.pt``. That is
    the order vLLM's default loader globs in; it never loads ``*.pth`` (Meta's ``original/``
    checkpoints), so those do not count. Index files are not weights.
    """
    top = sorted(n for n in set(names) if "/" not in n)
    st = [n for n in top if n.endswith(".safetensors")]
    if st:
        consolidated = [n for n in st if _is_consolidated(n)]
        hf_shards = [n for n in st if not _is_consolidated(n)]
        if load_format == "mistral" and consolidated:
            return consolidated
        return hf_shards or consolidated
    return [n for n in top if n.endswith(".bin")] or [n for n in top if n.endswith(".pt")]


def _index_files(top: list[str], weights: list[str]) -> list[str]:
    """The index files that go with the chosen weight files (same format, same copy)."""
    if not weights:
        return []
    if weights[0].endswith(".bin"):
        return [n for n in top if n.endswith(".bin.index.json")]
    if weights[0].endswith(".safetensors"):
        copy = _is_consolidated(weights[0])
        return [n for n in top if n.endswith(".safetensors.index.json") and _is_consolidated(n) == copy]
    return []


def select_files(paths: Iterable[str], load_format: str = "hf") -> list[str]:
    """The repo files to fetch for a load format: the weights of ``weight_files``, their index,
    and the small top-level files a server needs (``params.json`` / ``tekken.json`` for ``mistral``).
    """
    top = sorted(p for p in set(paths) if "/" not in p)
    support = [p for p in top if _matches(p, _SUPPORT_PATTERNS)]
    weights = weight_files(top, load_format)
    if load_format == "mistral":
        support += [p for p in top if p in _MISTRAL_SUPPORT]
    return sorted(set(support) | set(weights) | set(_index_files(top, weights)))


def has_weights(names: Iterable[str]) -> bool:
    """Whether ``names`` hold a weight file vLLM can load (by ``weight_files``)."""
    return bool(weight_files(names))


def check_model_folder(folder: Path) -> list[str]:
    """The one rule for a local model folder: it exists, holds ``config.json`` and at least one
    weight file vLLM loads. Returns the names of the files at its top level; InputError if not."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(
            f"Model folder {folder} does not exist or is not a folder",
            fix="pass an existing folder holding config.json and the weights, or a Hugging Face id (org/name)",
        )
    try:
        names = [p.name for p in folder.iterdir() if p.is_file()]
    except OSError as e:
        raise InputError(
            f"Model folder {folder} cannot be read",
            why=e.strerror or type(e).__name__,
            fix="check the folder's permissions and the volume mounted there",
        ) from None
    if "config.json" not in names:
        raise InputError(
            f"Model folder {folder} has no config.json",
            why="vLLM and the planner read the model's shape from the Hugging Face config.json",
            fix="point --model at the folder that holds the model's config.json",
        )
    if not has_weights(names):
        raise InputError(
            f"Model folder {folder} holds no weight files",
            why=f"It has none of the files vLLM loads ({WEIGHT_FILES_RULE})",
            fix="download the weights into the folder first (kaito-run --model ORG/NAME --download-only)",
        )
    return names

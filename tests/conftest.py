"""Shared pytest fixtures. Keep each engineer's fixtures in their own group."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:  # so ``tests.support`` imports however pytest was started
    sys.path.insert(0, _REPO_ROOT)

# huggingface_hub reads these once, at import: set them before any test module imports it.
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="kaito-test-hf-home-"))

# =================================================================================================
# Hugging Face hub emulator (tests/support/hub_emulator.py)
# =================================================================================================

GRANTED_TOKEN = "hf_granted_AbCdEf0123456789granted"
UNGRANTED_TOKEN = "hf_valid_user_without_grant_987654321"
BAD_TOKEN = "hf_not_a_real_token_ZZZZZZZZZZZZZZZZZZ"
EMULATOR_LFS_THRESHOLD = 1024  # makes the tiny repos' weight files LFS files (sha256 ETags)
BIG_FILE_BYTES = 12 * 1024 * 1024  # a file big enough that a dropped GET resumes part-way


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def _config() -> str:
    return json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "max_position_embeddings": 256})


def build_hub_repos(root: Path) -> Path:
    """Repos the weights tests use (deterministic content, so commits are stable)."""
    rnd = __import__("random").Random(1234)

    def blob(n: int) -> bytes:
        return rnd.randbytes(n)

    tiny = root / "org" / "tiny"
    _write(tiny / "config.json", _config())
    _write(tiny / "generation_config.json", '{"do_sample": false}')
    _write(tiny / "tokenizer.json", '{"model": {}}')
    _write(tiny / "tokenizer_config.json", '{"chat_template": "{{ messages }}"}')
    _write(tiny / "model.safetensors", blob(200_000))
    _write(tiny / "pytorch_model.bin", blob(50_000))
    _write(tiny / "original" / "consolidated.00.pth", blob(30_000))
    _write(tiny / "original" / "model.safetensors", blob(30_000))
    _write(tiny / "README.md", "# tiny\n")

    sharded = root / "org" / "sharded"
    _write(sharded / "config.json", _config())
    _write(sharded / "tokenizer.json", '{"model": {}}')
    _write(sharded / "model-00001-of-00002.safetensors", blob(40_000))
    _write(sharded / "model-00002-of-00002.safetensors", blob(40_000))
    _write(sharded / "model.safetensors.index.json", '{"weight_map": {}}')
    _write(sharded / "consolidated.safetensors", blob(70_000))
    _write(sharded / "params.json", '{"dim": 64}')
    _write(sharded / "tekken.json", '{"vocab": []}')

    gated = root / "org" / "gated"
    _write(gated / "config.json", _config())
    _write(gated / "model.safetensors", blob(60_000))

    big = root / "org" / "big"
    _write(big / "config.json", _config())
    _write(big / "model.safetensors", blob(BIG_FILE_BYTES))
    return root


@pytest.fixture(scope="session")
def hub_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_hub_repos(tmp_path_factory.mktemp("hub-repos"))


@pytest.fixture
def hub(hub_root: Path) -> Iterator[object]:
    """A running emulator (fresh fault/record state per test); ``org/gated`` grants GRANTED_TOKEN."""
    from tests.support.hub_emulator import HubEmulator

    emulator = HubEmulator(hub_root, lfs_threshold=EMULATOR_LFS_THRESHOLD, valid_tokens={UNGRANTED_TOKEN})
    emulator.gate("org/gated", {GRANTED_TOKEN})
    with emulator:
        yield emulator


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ambient token or offline switch leaks into a hub test; a private HF_HOME."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "KAITO_HF_TOKEN_FILE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))


# ============================================= end of hub emulator fixtures =====================

# =================================================================================================
# CLI / API: a clean launcher environment for every test
# =================================================================================================

# What the launcher reads from the environment. A developer's shell (or a CI runner inside a pod)
# may set any of these; tests must not depend on it. CUDA_VISIBLE_DEVICES is left alone on purpose:
# the real-NVML tests on a GPU machine must see what the machine was given.
_LAUNCHER_ENV_PREFIXES = ("KAITO_", "LWS_", "PET_")
_LAUNCHER_ENV_NAMES = (
    "MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "POD_INDEX", "HOSTNAME",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
    "HF_ENDPOINT",
)

# huggingface_hub reads HF_HUB_OFFLINE once, at import (before any fixture runs): drop it now.
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def clean_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every launcher-relevant variable for the test (monkeypatch restores them after)."""
    for name in list(os.environ):
        if name.startswith(_LAUNCHER_ENV_PREFIXES) or name in _LAUNCHER_ENV_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tiny_hub(tmp_path_factory: pytest.TempPathFactory, hub_env: None) -> Iterator[object]:
    """An emulated hub holding the bundled tiny model as org/tiny-llama (a complete config.json)."""
    import shutil

    from tests.support.hub_emulator import HubEmulator

    root = tmp_path_factory.mktemp("tiny-hub")
    shutil.copytree(Path(_REPO_ROOT) / "models" / "tiny-llama", root / "org" / "tiny-llama")
    with HubEmulator(root, lfs_threshold=1024) as emulator:
        yield emulator


# ============================================= end of CLI / API fixtures ========================


@pytest.fixture(scope="session")
def fixture_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Header-only copies of real models (tests/support/model_fixtures.py), built once per run."""
    from tests.support.model_fixtures import build_fixture_hub

    return build_fixture_hub(tmp_path_factory.mktemp("fixture-hub"))


@pytest.fixture
def fixture_hub(fixture_root: Path, hub_env: None) -> Iterator[object]:
    """The hub emulator serving those models; the Llama fixture is gated to GRANTED_TOKEN."""
    from tests.support.hub_emulator import HubEmulator
    from tests.support.model_fixtures import FIXTURES

    emulator = HubEmulator(fixture_root, lfs_threshold=1024, valid_tokens=set())
    emulator.gate(FIXTURES["llama"].repo_id, {GRANTED_TOKEN})
    with emulator:
        yield emulator

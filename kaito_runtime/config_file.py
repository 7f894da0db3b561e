"""KAITO's inference config file: a YAML file whose ``vllm:`` section maps vLLM flags to values.

KAITO mounts it at /mnt/config/inference_config.yaml. Its values win over the plan (they are
merged after the planned flags), exactly as KAITO appends them after its own flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kaito_runtime.errors import ConfigFileError

# Keys of the KAITO file that are not vLLM flags; accepted and ignored with a note.
KAITO_ONLY_KEYS = frozenset({"kv_cache_cpu_memory_utilization", "max_probe_steps"})


def read_vllm_section(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigFileError(
            f"Cannot read the config file {path}",
            why=exc.strerror or str(exc),
            fix="pass an existing YAML file with --config (env KAITO_CONFIG_FILE)",
        ) from exc
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(
            f"The config file {path} is not valid YAML", why=str(exc).splitlines()[0],
            fix="correct the YAML syntax",
        ) from exc
    if not isinstance(document, dict):
        raise ConfigFileError(
            f"The config file {path} must be a mapping", why=f"it holds a {type(document).__name__}",
            fix="write it as 'vllm:' followed by 'flag-name: value' lines",
        )
    unknown = sorted(set(document) - {"vllm"} - KAITO_ONLY_KEYS)
    if unknown:
        raise ConfigFileError(
            f"The config file {path} has unknown top-level keys: {', '.join(unknown)}",
            fix="put vLLM flags under the 'vllm:' section",
        )
    section = document.get("vllm") or {}
    if not isinstance(section, dict):
        raise ConfigFileError(
            f"The 'vllm' section of {path} must be a mapping of flag names to values",
            why=f"it holds a {type(section).__name__}",
            fix="write e.g. 'vllm:\\n  max-model-len: 8192'",
        )
    for key, value in section.items():
        if isinstance(value, (dict, list)):
            raise ConfigFileError(
                f"The config file {path} sets vllm.{key} to a {type(value).__name__}",
                fix="give each flag a single value (string, number or true/false)",
            )
    return {str(k).lstrip("-"): v for k, v in section.items()}

"""KAITO's inference config file: a YAML file whose ``vllm:`` section maps vLLM flags to values.

KAITO mounts it at /mnt/config/inference_config.yaml. Its values win over the plan (they are
merged after the planned flags), exactly as KAITO appends them after its own flags.

Values: a scalar is one flag value; ``true`` is a bare switch; ``false``/null drops the flag; a
list gives several values (``served-model-name: [a, b]``); a mapping is one JSON value, as vLLM's
JSON flags take it (``compilation-config: {level: 3}`` -> ``--compilation-config '{"level":3}'``).
Top level: ``kv_cache_cpu_memory_utilization`` (0..1) sets CPU KV offload and wins over
--kv-cache-cpu-memory-utilization, as KAITO's file wins over its command line; ``max_probe_steps``
is read and ignored with a note; any other key is ignored with one warning naming them all
(KAITO ignores them, and its next release may add one).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kaito_runtime.errors import ConfigFileError, value_kind
from kaito_runtime.yaml_bounds import YamlBoundsError, load_bounded, read_bounded_text

# Keys of the KAITO file that are not vLLM flags, with why they do not apply here.
KAITO_ONLY_KEYS: dict[str, str] = {
    "max_probe_steps": "a legacy KAITO setting; kaito-run plans the context length without probing",
}
KV_OFFLOAD_KEY = "kv_cache_cpu_memory_utilization"
KNOWN_KEYS = frozenset({"vllm", KV_OFFLOAD_KEY, *KAITO_ONLY_KEYS})


@dataclass(frozen=True)
class ConfigFile:
    """The parts of a KAITO config file that matter to the launch."""

    # flag name as written, with or without leading dashes -> value (see the module docstring);
    # vllm_command spells the flags
    vllm_args: dict[str, Any]
    notes: tuple[str, ...] = ()  # things read and ignored, for the log
    kv_cache_cpu_memory_utilization: float | None = None  # the top-level key, checked to be 0..1
    unknown_keys: tuple[str, ...] = ()  # top-level keys ignored (one warning names them)

    @property
    def unknown_keys_warning(self) -> str | None:
        if not self.unknown_keys:
            return None
        return (
            f"ignoring unknown top-level keys of the config file: {', '.join(self.unknown_keys)} "
            "(only vllm:, kv_cache_cpu_memory_utilization and max_probe_steps are read, as KAITO does)"
        )


def read_config(path: Path) -> ConfigFile:
    """Read and check ``path``; raises ConfigFileError (exit 2) naming the file and the problem."""
    document = _load(path)
    unknown = tuple(sorted(str(key) for key in document if key not in KNOWN_KEYS))
    section = document.get("vllm") or {}
    if not isinstance(section, dict):
        raise ConfigFileError(
            f"The 'vllm' section of {path} must be a mapping of flag names to values",
            why=f"It holds {value_kind(section)}",
            fix="write it as flag: value lines under 'vllm:', e.g. 'vllm: {max-model-len: 8192}'",
        )
    for key, value in section.items():
        _check_value(path, str(key), value)
    notes = tuple(
        f"{path}: ignoring {key}: {value!r} ({KAITO_ONLY_KEYS[key]})"
        for key, value in document.items()
        if key in KAITO_ONLY_KEYS
    )
    return ConfigFile(
        vllm_args={str(k): v for k, v in section.items()}, notes=notes,
        kv_cache_cpu_memory_utilization=_utilization(path, document.get(KV_OFFLOAD_KEY)), unknown_keys=unknown,
    )


def _utilization(path: Path, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigFileError(
            f"The config file {path} sets {KV_OFFLOAD_KEY} to {value!r}",
            why="It must be a number from 0 to 1 (a fraction of the container's free memory)",
            fix=f"write e.g. '{KV_OFFLOAD_KEY}: 0.5', or 0 to turn CPU KV offload off",
        )
    return float(value)


def _load(path: Path) -> dict[Any, Any]:
    try:
        document = load_bounded(read_bounded_text(path)) or {}
    except OSError as exc:
        raise ConfigFileError(
            f"Cannot read the config file {path}",
            why=exc.strerror or str(exc),
            fix="pass an existing YAML file with --config (env KAITO_CONFIG_FILE)",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"The config file {path} is not UTF-8 text", why=f"{exc.reason} at byte {exc.start}",
                              fix="save it as UTF-8") from None
    except YamlBoundsError as exc:
        raise ConfigFileError(f"The config file {path} is too large", why=str(exc), fix="shorten it") from None
    except yaml.YAMLError as exc:
        raise ConfigFileError(
            f"The config file {path} is not valid YAML", why=_first_line(exc),
            fix="correct the YAML syntax",
        ) from exc
    if not isinstance(document, dict):
        raise ConfigFileError(
            f"The config file {path} must be a mapping", why=f"It holds {value_kind(document)}",
            fix="write it as 'vllm:' followed by 'flag-name: value' lines",
        )
    return document


def _check_value(path: Path, key: str, value: object) -> None:
    if isinstance(value, list) and not value:
        raise ConfigFileError(
            f"The config file {path} sets vllm.{key} to an empty list",
            fix="give the flag at least one value, or 'false' to leave it out",
        )
    if isinstance(value, (dict, list)):
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise ConfigFileError(
                f"The config file {path} sets vllm.{key} to a value that is not plain JSON",
                why=str(exc),
                fix="use only strings, numbers, true/false, null, lists and mappings (quote dates and the like)",
            ) from exc


def _first_line(exc: yaml.YAMLError) -> str:
    """PyYAML's first line ('while parsing a block mapping'), as a sentence."""
    line = str(exc).splitlines()[0].strip()
    return line[:1].upper() + line[1:]

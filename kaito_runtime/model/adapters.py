"""LoRA adapters in a folder (KAITO mounts them at /mnt/adapter/<name>/): found, read and checked
before vLLM starts, so a broken adapter is one line naming its file, not a vLLM traceback after
the weights were loaded.

Every sub-folder holding an ``adapter_config.json`` is one adapter, named after the folder. Its
config must be a JSON object of a LoRA adapter (``peft_type`` LORA, when given) with a positive
integer rank ``r`` (PEFT's default 8 when absent) and its weights beside it
(``adapter_model.safetensors`` or ``adapter_model.bin``). ``base_model_name_or_path`` is compared
with the model served; a mismatch is a warning, since an adapter trained on a copy of the same
model under another name is common. A model that refuses LoRA (KAITO's ``DisallowLoRA``) refuses
adapters with exit 2.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kaito_runtime.errors import InputError
from kaito_runtime.types import LoraAdapter, ModelSpec

CONFIG_NAME = "adapter_config.json"
WEIGHT_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_DEFAULT_RANK = 8  # peft.LoraConfig's default ``r``


@dataclass(frozen=True)
class AdapterScan:
    """The adapters of a folder, and what was read and skipped there (for the log)."""

    folder: Path
    adapters: tuple[LoraAdapter, ...] = ()
    notes: tuple[str, ...] = ()


def find_adapters(folder: Path) -> AdapterScan:
    """Read every adapter under ``folder``; raises InputError (exit 2) naming the adapter's file
    for a folder that cannot be read or an adapter whose config or weights are wrong."""
    if not folder.is_dir():
        raise InputError(
            f"The adapters folder {folder} does not exist or is not a folder",
            fix="mount the adapters there, or drop --adapters-dir (env KAITO_ADAPTERS_DIR)",
        )
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"Cannot list the adapters folder {folder}", why=exc.strerror or str(exc),
                         fix="make it readable by this user") from exc
    adapters: list[LoraAdapter] = []
    notes: list[str] = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.is_dir():
            continue  # a ConfigMap's ..data links, stray files
        if not (entry / CONFIG_NAME).is_file():
            notes.append(f"{entry}: no {CONFIG_NAME}, not a LoRA adapter; skipped")
            continue
        adapter, note = read_adapter(entry)
        adapters.append(adapter)
        if note:
            notes.append(note)
        if option_like(adapter.name):
            notes.append(
                f"LoRA adapter folder {adapter.name!r} starts with '-', which vLLM's parser would read as an option: "
                "it is passed in --lora-modules' JSON form ({\"name\": ..., \"path\": ...}), so it stays an adapter name"
            )
    if not adapters:
        notes.append(f"{folder}: no LoRA adapters found; serving the model alone")
    return AdapterScan(folder, tuple(adapters), tuple(notes))


def option_like(name: str) -> bool:
    """Whether vLLM's argument parser would read ``name`` as an option, were it a bare token."""
    return name.startswith("-")


def read_adapter(folder: Path) -> tuple[LoraAdapter, str | None]:
    """One adapter folder -> LoraAdapter, and a note when its rank was defaulted."""
    path = folder / CONFIG_NAME
    fix = f"correct {path} (a PEFT LoRA adapter's config), or remove the folder {folder}"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"Cannot read the LoRA adapter config {path}", why=exc.strerror or str(exc), fix=fix) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"The LoRA adapter config {path} is not valid JSON", why=str(exc), fix=fix) from exc
    if not isinstance(config, dict):
        raise InputError(f"The LoRA adapter config {path} must be a JSON object", why=f"it holds a {type(config).__name__}", fix=fix)
    peft_type = config.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise InputError(
            f"The adapter {folder.name} is a {peft_type} adapter, not LoRA ({path})",
            why="vLLM serves LoRA adapters only",
            fix=fix,
        )
    note = None
    rank = config.get("r")
    if rank is None:
        rank = PEFT_DEFAULT_RANK
        note = f"{path}: no rank 'r'; taking PEFT's default {PEFT_DEFAULT_RANK}"
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise InputError(f"The LoRA adapter config {path} gives rank r={rank!r}",
                         why="the rank must be a positive whole number", fix=fix)
    if not any((folder / name).is_file() for name in WEIGHT_NAMES):
        raise InputError(
            f"The LoRA adapter {folder.name} has no weights",
            why=f"neither {' nor '.join(WEIGHT_NAMES)} is in {folder}",
            fix=f"copy the adapter's weights into {folder}, or remove the folder",
        )
    base = config.get("base_model_name_or_path")
    base = str(base) if base not in (None, "") else None
    return LoraAdapter(name=folder.name, path=str(folder), rank=rank, base_model=base), note


def _same_model(base: str, model: ModelSpec) -> bool:
    """Whether ``base`` names ``model``: its repo id, its name or folder, or (a local copy of it)
    a path ending in the repo's name. Case-insensitive, as hub ids are."""
    base_l = base.strip().rstrip("/").lower()
    names = {n.lower() for n in (model.repo_id, model.name, model.local_path) if n}
    if base_l in names:
        return True
    tail = PurePosixPath(base_l).name
    tails = {PurePosixPath(n.rstrip("/")).name for n in names}
    return bool(tail) and tail in tails


def check_adapters(scan: AdapterScan, model: ModelSpec) -> tuple[str, ...]:
    """Refuse adapters for a model that disallows LoRA (exit 2); the warnings for adapters whose
    base model is another one."""
    if not scan.adapters:
        return ()
    names = ", ".join(a.name for a in scan.adapters)
    if not model.lora_allowed:
        raise InputError(
            f"{model.name} does not allow LoRA adapters, but {scan.folder} holds {len(scan.adapters)} ({names})",
            why="the preset disallows LoRA (as KAITO's DisallowLoRA does)",
            fix=f"remove the adapters from {scan.folder} (or do not mount it), or serve a model that allows LoRA",
        )
    served = model.repo_id or model.local_path or model.name
    return tuple(
        f"LoRA adapter {a.name} was trained on {a.base_model}, but the model is {served}; "
        "vLLM may refuse it or answer poorly with it"
        for a in scan.adapters
        if a.base_model is not None and not _same_model(a.base_model, model)
    )


def load_adapters(folder: Path | None, model: ModelSpec, log: logging.Logger) -> tuple[tuple[LoraAdapter, ...], tuple[str, ...]]:
    """--adapters-dir: the LoRA adapters found there, checked against the model (a model that
    disallows LoRA refuses them, exit 2), and the warnings for the user. Notes are logged here."""
    if folder is None:
        return (), ()
    scan = find_adapters(folder)
    for note in scan.notes:
        log.info("%s", note)
    warnings = check_adapters(scan, model)
    if scan.adapters:
        log.info("LoRA adapters from %s: %s", scan.folder, ", ".join(f"{a.name} (rank {a.rank})" for a in scan.adapters))
    return scan.adapters, warnings

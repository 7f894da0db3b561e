"""Hardware this node does not have: the GPU SKU table (``presets/hardware/gpu-skus.yaml``).

``--sku Standard_ND96isr_H100_v5`` and ``--assume-gpus 4xA100-80GB`` become a NodeInventory so
the planner can answer "would it fit there?" from a laptop. Figures live in the YAML file; this
module only validates and looks them up.

Host figures of a planned inventory: a machine SKU uses the vCPUs and RAM from its table row
(all RAM counted as available, disk unknown); ``--assume-gpus`` names no machine, so its host is
all zeros (unknown) unless the caller passes one, e.g. ``probe_host()`` of this machine.
Planned GPUs get placeholder UUIDs ``sku-<model>-<i>``; free memory equals total.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kaito_runtime.settings import gpu_sku_table_path
from kaito_runtime.errors import CatalogError, InputError, UnknownSkuError
from kaito_runtime.types import GiB, GpuInfo, HostInfo, MiB, NodeInventory

_ASSUME_RE = re.compile(r"^\s*(?:([0-9]+)\s*[x×*]\s*)?([A-Za-z][A-Za-z0-9._ -]*?)\s*$", re.IGNORECASE)
_ASSUME_FORM = "[<count>x]<gpu-model>, e.g. 4xA100-80GB, 8xH200 or A10"


class GpuModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(min_length=1)
    nvml_name: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    memory_mib: int = Field(gt=0)
    compute_capability: str
    nvlink: bool

    @field_validator("compute_capability")
    @classmethod
    def _cc_form(cls, v: str) -> str:
        if not re.fullmatch(r"\d+\.\d", v):
            raise ValueError(f"compute_capability must look like '8.0', got {v!r}")
        return v

    @property
    def cc(self) -> tuple[int, int]:
        major, minor = self.compute_capability.split(".")
        return int(major), int(minor)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this model answers to (key, aliases, NVML name with and without 'NVIDIA ')."""
        short = self.nvml_name.removeprefix("NVIDIA ").strip()
        return (self.key, *self.aliases, self.nvml_name, short)


class MachineSku(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    cloud: Literal["azure", "aws", "gcp"]
    gpu: str
    count: int = Field(ge=1)
    nvlink: bool | None = None  # None: the GPU model's default
    vcpus: int | None = Field(default=None, ge=1)
    memory_gib: float | None = Field(default=None, gt=0)


class SkuTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: tuple[GpuModel, ...]
    machines: tuple[MachineSku, ...]

    @model_validator(mode="after")
    def _consistent(self) -> SkuTable:
        seen: dict[str, str] = {}
        for g in self.gpus:
            for n in {n.lower() for n in g.names}:
                if n in seen and seen[n] != g.key:
                    raise ValueError(f"GPU name {n!r} is used by both {seen[n]} and {g.key}")
                seen[n] = g.key
        keys = {g.key for g in self.gpus}
        machine_names: set[str] = set()
        for m in self.machines:
            if m.gpu not in keys:
                raise ValueError(f"machine {m.name} names GPU {m.gpu!r}, which is not in gpus")
            if m.name.lower() in machine_names:
                raise ValueError(f"machine {m.name} is listed twice")
            machine_names.add(m.name.lower())
        return self

    def gpu_model(self, key: str) -> GpuModel:
        return next(g for g in self.gpus if g.key == key)


@functools.lru_cache(maxsize=4)
def load_sku_table(path: Path | None = None) -> SkuTable:
    """Read and validate the SKU table (cached). Problems raise CatalogError (exit 2)."""
    path = path or gpu_sku_table_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(
            f"Cannot read the GPU SKU table {path}", why=str(exc), fix="restore the file from the release"
        ) from exc
    try:
        return SkuTable.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(
            f"The GPU SKU table {path} is invalid", why=str(exc), fix="correct the entries named above"
        ) from exc


def _suggest(text: str, names: list[str]) -> str | None:
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(text.lower(), list(by_lower), n=3, cutoff=0.5)
    if not close:
        return None
    return "Closest known names: " + ", ".join(by_lower[c] for c in close)


def find_gpu_model(name: str, table: SkuTable | None = None) -> GpuModel | None:
    """The GPU model answering to ``name`` (key, alias or NVML name, any case), or None."""
    table = table or load_sku_table()
    low = name.strip().lower()
    return next((g for g in table.gpus if low in (n.lower() for n in g.names)), None)


def find_machine(name: str, table: SkuTable | None = None) -> MachineSku | None:
    """The machine SKU named ``name`` (any case; Azure's ``Standard_`` prefix optional), or None."""
    table = table or load_sku_table()
    low = name.strip().lower()
    for m in table.machines:
        full = m.name.lower()
        if low == full or (m.cloud == "azure" and "standard_" + low == full):
            return m
    return None


def _gpus(model: GpuModel, count: int) -> tuple[GpuInfo, ...]:
    size = model.memory_mib * MiB
    return tuple(
        GpuInfo(
            index=i,
            name=model.nvml_name,
            uuid=f"sku-{model.key}-{i}",
            total_bytes=size,
            free_bytes=size,
            compute_capability=model.cc,
        )
        for i in range(count)
    )


def _all_pairs(count: int) -> tuple[tuple[int, int], ...]:
    return tuple((a, b) for a in range(count) for b in range(a + 1, count))


def _unknown_host() -> HostInfo:
    return HostInfo(cpu_count=0, ram_total_bytes=0, ram_available_bytes=0)


def inventory_for_sku(name: str, host: HostInfo | None = None) -> NodeInventory:
    """The inventory of a cloud machine SKU, e.g. ``Standard_NC80adis_H100_v5`` or ``p5.48xlarge``."""
    table = load_sku_table()
    machine = find_machine(name, table)
    if machine is None:
        raise UnknownSkuError(
            f"Unknown machine SKU {name.strip()!r}",
            why=_suggest(name.strip(), [m.name for m in table.machines])
            or f"It is none of the {len(table.machines)} machine SKUs in the GPU SKU table",
            fix="use a machine name from the GPU SKU table (presets/hardware/gpu-skus.yaml), or "
            f"describe the GPUs with --assume-gpus {_ASSUME_FORM}",
        )
    model = table.gpu_model(machine.gpu)
    if host is None:
        if machine.vcpus and machine.memory_gib:
            ram = int(machine.memory_gib * GiB)
            host = HostInfo(cpu_count=machine.vcpus, ram_total_bytes=ram, ram_available_bytes=ram)
        else:
            host = _unknown_host()
    nvlink = (model.nvlink if machine.nvlink is None else machine.nvlink) and machine.count > 1
    return NodeInventory(
        gpus=_gpus(model, machine.count),
        host=host,
        source="sku",
        label=machine.name,
        nvlink=nvlink,
        nvlink_pairs=_all_pairs(machine.count) if nvlink else (),
    )


# The most GPUs one real node holds today (HGX/DGX boards carry 8, the largest cloud and
# NVL-style machines 16). More is a typo or a cluster, not a node: --nnodes describes those.
MAX_GPUS_PER_NODE = 16


def parse_assumed_gpus(text: str) -> tuple[int, GpuModel]:
    """Parse ``[<count>x]<model>`` into (count, model). Raises InputError / UnknownSkuError."""
    m = _ASSUME_RE.match(text or "")
    if not m:
        raise InputError(
            f"Cannot read --assume-gpus {text!r}",
            why=f"The expected form is {_ASSUME_FORM}",
            fix="write the GPU count, an 'x', then a GPU model from the GPU SKU table (presets/hardware/gpu-skus.yaml)",
        )
    count = int(m.group(1)) if m.group(1) is not None else 1
    if count < 1:
        raise InputError(
            f"Cannot read --assume-gpus {text!r}",
            why=f"The GPU count must be at least 1 (expected form {_ASSUME_FORM})",
            fix="give a positive count such as 1x or 4x",
        )
    if count > MAX_GPUS_PER_NODE:
        raise InputError(
            f"--assume-gpus {text!r} describes {count} GPUs on one node",
            why=f"no real node holds more than {MAX_GPUS_PER_NODE} GPUs",
            fix=f"give at most {MAX_GPUS_PER_NODE} GPUs per node, and --nnodes N for several nodes",
        )
    table = load_sku_table()
    model = find_gpu_model(m.group(2), table)
    if model is None:
        names = [g.key for g in table.gpus] + [a for g in table.gpus for a in g.aliases]
        hint = _suggest(m.group(2), names)
        raise UnknownSkuError(
            f"Unknown GPU model {m.group(2)!r} in --assume-gpus {text!r}",
            why=hint or f"Known models: {', '.join(g.key for g in table.gpus)}",
            fix="name a GPU model from the GPU SKU table (presets/hardware/gpu-skus.yaml)",
        )
    return count, model


def inventory_for_assumed_gpus(text: str, host: HostInfo | None = None) -> NodeInventory:
    """The inventory described by ``--assume-gpus``, e.g. ``4xA100-80GB``, ``8xH200``, ``A10``."""
    count, model = parse_assumed_gpus(text)
    return NodeInventory(
        gpus=_gpus(model, count),
        host=host or _unknown_host(),
        source="assumed",
        label=text.strip(),
        nvlink=model.nvlink and count > 1,
        nvlink_pairs=_all_pairs(count) if model.nvlink else (),
    )

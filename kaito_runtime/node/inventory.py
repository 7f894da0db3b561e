"""What this node has: GPUs through NVML, host figures through psutil -> NodeInventory.

NVML ignores CUDA_VISIBLE_DEVICES and enumerates every GPU it can see in PCI bus order, so the
inventory applies both visibility variables itself, matching devices by UUID:

* ``NVIDIA_VISIBLE_DEVICES`` (read by the NVIDIA container runtime): ``all``, ``none``/``void``
  (no GPU), or a list of indices / ``GPU-`` / ``MIG-`` UUIDs. Inside a container the runtime has
  usually applied it already and NVML numbers the injected GPUs from 0; a list of indices is
  therefore taken as already applied when NVML sees exactly that many GPUs. Unset or empty means
  no filter here.
* ``CUDA_VISIBLE_DEVICES`` (read by CUDA in our child): indices into what is left, ``GPU-`` or
  ``MIG-`` UUIDs (unique prefixes allowed, as CUDA does). Empty hides every GPU. Like CUDA, the
  list stops at the first entry that matches nothing (``-1`` hides all); a warning goes to
  ``NodeInventory.notes``.

Indices are interpreted in PCI bus order, which is CUDA's order when ``CUDA_DEVICE_ORDER=PCI_BUS_ID``
or when all GPUs are the same model (CUDA's default "fastest first" then ties by bus id).

A GPU in MIG mode is replaced by its slices (``GpuInfo.mig=True``), each with its own memory and
``MIG-`` UUID. Missing library, driver not loaded, version mismatch, zero GPUs: a normal inventory
with ``gpus=()`` and ``no_gpu_reason`` set, never an exception.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from kaito_runtime.node.nvml import (
    MODULE_NOT_INSTALLED,
    NVML_ERROR_DRIVER_NOT_LOADED,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH,
    NVML_ERROR_LIBRARY_NOT_FOUND,
    NVML_ERROR_UNKNOWN,
    NvmlBackend,
    NvmlCallError,
    RealNvml,
    RecordedNvml,
)
from kaito_runtime.types import format_gib
from kaito_runtime.types import GiB, GpuInfo, HostInfo, NodeInventory

log = logging.getLogger(__name__)

# Memory already taken on a GPU above which the inventory warns (other tenants, a leftover process).
_IN_USE_WARN_BYTES = 1 * GiB
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_INT_RE = re.compile(r"^[+-]?[0-9]+$")  # ASCII digits: kaito_runtime.numbers


# ------------------------------------------------------------------------------------------------
# NVML -> candidate devices
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Candidate:
    """A device CUDA could be given: a whole GPU, or one MIG slice of a parent."""

    gpu: GpuInfo  # index is filled in after filtering
    nvml_index: int  # of the physical GPU (the parent for a slice)
    parent_uuid: str  # the physical GPU's UUID (itself for a whole GPU)


def _reason_for_init_error(exc: NvmlCallError) -> str:
    if exc.code == MODULE_NOT_INSTALLED:
        return (
            "the NVML Python binding is missing: the module pynvml (package nvidia-ml-py) is not "
            "installed, so GPUs cannot be probed"
        )
    if exc.code == NVML_ERROR_LIBRARY_NOT_FOUND:
        return (
            "the NVIDIA driver library (libnvidia-ml.so.1, NVML) was not found: no NVIDIA driver "
            "is installed, or the container was started without GPU access"
        )
    if exc.code == NVML_ERROR_DRIVER_NOT_LOADED:
        return "the NVIDIA driver library is present but the driver kernel module is not loaded"
    if exc.code == NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return (
            "the NVIDIA driver library and the loaded kernel module have different versions "
            "(usually after a driver upgrade without a reboot); reboot the node or reload the driver"
        )
    return f"the NVIDIA driver library (NVML) failed to start: {exc.text} (NVML code {exc.code})"


def _enumerate(backend: NvmlBackend, notes: list[str]) -> list[_Candidate]:
    out: list[_Candidate] = []
    for i in range(backend.device_count()):
        try:
            dev = backend.device(i)
        except NvmlCallError as exc:
            notes.append(f"NVML could not read GPU {i} ({exc.text}); it is left out")
            continue
        if not dev.mig_enabled:
            gpu = GpuInfo(
                index=-1,
                name=dev.name,
                uuid=dev.uuid,
                total_bytes=dev.total_bytes,
                free_bytes=dev.free_bytes,
                compute_capability=dev.compute_capability,
                pci_bus_id=dev.pci_bus_id,
            )
            out.append(_Candidate(gpu, i, dev.uuid))
            continue
        try:
            slices = backend.mig_devices(i)
        except NvmlCallError as exc:
            notes.append(f"NVML could not list the MIG slices of GPU {i} ({exc.text}); it is left out")
            continue
        if not slices:
            notes.append(
                f"GPU {i} ({dev.name}) is in MIG mode but has no MIG slices configured; CUDA "
                "cannot use it until slices are created (or MIG is turned off)"
            )
        for s in slices:
            gpu = GpuInfo(
                index=-1,
                name=s.name,
                uuid=s.uuid,
                total_bytes=s.total_bytes,
                free_bytes=s.free_bytes,
                compute_capability=dev.compute_capability,
                pci_bus_id=dev.pci_bus_id,
                mig=True,
            )
            out.append(_Candidate(gpu, i, dev.uuid))
    return out


# ------------------------------------------------------------------------------------------------
# Visibility variables
# ------------------------------------------------------------------------------------------------


def _split(value: str) -> list[str]:
    return [t.strip() for t in value.split(",") if t.strip()]


def _apply_nvidia_visible(
    cands: list[_Candidate], value: str | None, physical_count: int, notes: list[str]
) -> tuple[list[_Candidate], str | None]:
    """Filter by NVIDIA_VISIBLE_DEVICES; return the survivors and a reason when none are left."""
    if value is None or not value.strip():
        return cands, None
    v = value.strip().lower()
    if v == "all":
        return cands, None
    if v in ("none", "void"):
        return [], f"NVIDIA_VISIBLE_DEVICES={value.strip()} gives this container no GPU"
    tokens = _split(value)
    indices = [t for t in tokens if _INT_RE.match(t)]
    if len(indices) == len(tokens) and len(tokens) == physical_count:
        return cands, None  # the container runtime has applied it; NVML numbers from 0
    keep: list[_Candidate] = []
    for tok in tokens:
        if _INT_RE.match(tok):
            hits = [c for c in cands if c.nvml_index == int(tok)]
        elif ":" in tok and all(_INT_RE.match(p) for p in tok.split(":", 1)):
            gpu_i, slice_i = (int(p) for p in tok.split(":", 1))
            on_gpu = [c for c in cands if c.nvml_index == gpu_i and c.gpu.mig]
            hits = on_gpu[slice_i : slice_i + 1]
        else:
            hits = [c for c in cands if tok.lower() in (c.gpu.uuid.lower(), c.parent_uuid.lower())]
        if not hits:
            notes.append(f"NVIDIA_VISIBLE_DEVICES entry {tok!r} matches no GPU that NVML sees; ignored")
        keep.extend(h for h in hits if h not in keep)
    keep.sort(key=lambda c: cands.index(c))  # the runtime exposes them in bus order
    if not keep:
        return [], f"NVIDIA_VISIBLE_DEVICES={value.strip()!r} matches no GPU that NVML sees"
    return keep, None


def _match_cuda_token(tok: str, cands: list[_Candidate]) -> _Candidate | None:
    if _INT_RE.match(tok):
        i = int(tok)
        return cands[i] if 0 <= i < len(cands) else None
    low = tok.lower()
    if low.startswith("mig-gpu-"):
        return None  # legacy MIG-GPU-<uuid>/<gi>/<ci> form: no instance ids to map it
    if low.startswith("mig-"):
        hits = [c for c in cands if c.gpu.mig and c.gpu.uuid.lower().startswith(low)]
    elif low.startswith("gpu-"):
        hits = [c for c in cands if c.parent_uuid.lower().startswith(low)]
        parents = {c.parent_uuid for c in hits}
        if len(parents) != 1:
            return None  # unknown or ambiguous prefix
        hits = hits[:1]  # a MIG parent's UUID selects its first slice
    else:
        return None
    return hits[0] if len(hits) == 1 else None


def _apply_cuda_visible(
    cands: list[_Candidate], value: str | None, notes: list[str]
) -> tuple[list[_Candidate], str | None]:
    if value is None:
        return cands, None
    shown = value.strip()
    tokens = _split(value)
    if not tokens:
        return [], "CUDA_VISIBLE_DEVICES is set to an empty value, which hides every GPU"
    keep: list[_Candidate] = []
    for pos, tok in enumerate(tokens):
        hit = _match_cuda_token(tok, cands)
        if hit is None or hit in keep:
            quiet = pos == 0 and _INT_RE.match(tok) and int(tok) < 0  # "-1": the usual "no GPU"
            if not quiet:
                why = "repeats an earlier entry" if hit is not None else "matches no visible GPU"
                notes.append(
                    f"CUDA_VISIBLE_DEVICES entry {tok!r} (position {pos}) {why}; as CUDA does, "
                    f"the GPUs listed from there on are ignored"
                )
            break
        keep.append(hit)
    if not keep:
        return [], f"CUDA_VISIBLE_DEVICES={shown!r} selects no GPU"
    return keep, None


def _order_note(cands: list[_Candidate], env: Mapping[str, str], notes: list[str]) -> None:
    cvd = env.get("CUDA_VISIBLE_DEVICES")
    if cvd is None or not any(_INT_RE.match(t) for t in _split(cvd)):
        return
    if len({c.gpu.name for c in cands}) > 1 and env.get("CUDA_DEVICE_ORDER") != "PCI_BUS_ID":
        notes.append(
            "CUDA_VISIBLE_DEVICES uses indices on a node with different GPU models: CUDA numbers "
            "them fastest-first unless CUDA_DEVICE_ORDER=PCI_BUS_ID, so the indices here (bus "
            "order) may name other GPUs; set CUDA_DEVICE_ORDER=PCI_BUS_ID or use GPU UUIDs"
        )


# ------------------------------------------------------------------------------------------------
# NVLink
# ------------------------------------------------------------------------------------------------


def _nvlink_pairs(backend: NvmlBackend, chosen: list[_Candidate], notes: list[str]) -> list[tuple[int, int]]:
    """Pairs (a, b), a < b, of positions in ``chosen`` that NVML reports NVLink P2P OK for."""
    if len(chosen) < 2 or any(c.gpu.mig for c in chosen):
        return []
    linked: list[tuple[int, int]] = []
    pairs = 0
    for a in range(len(chosen)):
        for b in range(a + 1, len(chosen)):
            pairs += 1
            try:
                ok = backend.nvlink_p2p(chosen[a].nvml_index, chosen[b].nvml_index)
            except NvmlCallError:
                ok = False  # NotSupported on PCIe-only cards: not connected
            if ok:
                linked.append((a, b))
    if linked and len(linked) < pairs:
        shown = ", ".join(f"{a}-{b}" for a, b in linked)
        notes.append(f"NVLink connects only some GPU pairs ({shown}); the rest talk over PCIe")
    return linked


# ------------------------------------------------------------------------------------------------
# Host
# ------------------------------------------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cgroup_cpu_limit(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota (v2 cpu.max, else v1 cfs quota), None when unlimited."""
    v2 = _read(root / "cpu.max")
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                return int(parts[0]) / int(parts[1])
            except (ValueError, ZeroDivisionError):
                return None
        return None
    for sub in ("cpu", "cpu,cpuacct"):
        quota, period = _read(root / sub / "cpu.cfs_quota_us"), _read(root / sub / "cpu.cfs_period_us")
        if quota and period:
            try:
                q, p = int(quota), int(period)
            except ValueError:
                return None
            return q / p if q > 0 and p > 0 else None
    return None


def _cgroup_memory(root: Path) -> tuple[int | None, int | None]:
    """(limit, usage) in bytes from cgroup v2 or v1, each None when unknown or unlimited."""
    for limit_f, usage_f in (
        (root / "memory.max", root / "memory.current"),
        (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes"),
    ):
        raw = _read(limit_f)
        if raw is None:
            continue
        try:
            limit = int(raw)
        except ValueError:
            return None, None  # "max"
        if limit >= 1 << 60:  # v1's "unlimited" is a huge page-aligned number
            return None, None
        usage_raw = _read(usage_f)
        try:
            usage = int(usage_raw) if usage_raw else None
        except ValueError:
            usage = None
        return limit, usage
    return None, None


def _cpu_count(root: Path) -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = psutil.cpu_count() or 1
    quota = _cgroup_cpu_limit(root)
    if quota:
        n = min(n, max(1, math.ceil(quota)))
    return n


def _nearest_existing(path: Path) -> Path:
    p = path.expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def probe_host(weights_dir: Path | str | None = None, *, cgroup_root: Path = _CGROUP_ROOT) -> HostInfo:
    """CPU cores this process may use, RAM (capped by the cgroup limit), free disk for weights.

    Disk is measured at the nearest existing folder of ``weights_dir`` (the folder itself may not
    exist yet); with no ``weights_dir`` the disk figures are None.
    """
    vm = psutil.virtual_memory()
    total, available = int(vm.total), int(vm.available)
    limit, usage = _cgroup_memory(cgroup_root)
    if limit is not None:
        total = min(total, limit)
        if usage is not None:
            available = min(available, max(0, limit - usage))
        available = min(available, total)
    disk_free: int | None = None
    disk_path: str | None = None
    if weights_dir is not None:
        disk_path = str(weights_dir)
        try:
            disk_free = int(psutil.disk_usage(str(_nearest_existing(Path(weights_dir)))).free)
        except OSError as exc:
            log.warning("cannot measure free disk at %s: %s", weights_dir, exc)
    return HostInfo(
        cpu_count=_cpu_count(cgroup_root),
        ram_total_bytes=total,
        ram_available_bytes=available,
        disk_free_bytes=disk_free,
        disk_path=disk_path,
    )


# ------------------------------------------------------------------------------------------------
# The inventory
# ------------------------------------------------------------------------------------------------


def _cuda_version_text(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


RECORDING_ENV = "KAITO_NVML_RECORDING"


def default_backend(env: Mapping[str, str]) -> NvmlBackend:
    """The real NVML library, or a recorded machine when ``KAITO_NVML_RECORDING`` names a JSON file.

    The recording (``nvml_probe.record_machine`` format) lets the CLI be exercised end to end as if
    on hardware we do not have; a file that cannot be read is reported as a no-GPU reason.
    """
    path = env.get(RECORDING_ENV)
    if not path:
        return RealNvml()
    try:
        return RecordedNvml.from_file(path)
    except (OSError, ValueError) as exc:
        return RecordedNvml(
            {"init_error": {"code": NVML_ERROR_UNKNOWN, "text": f"{RECORDING_ENV}={path} unreadable: {exc}"}}
        )


def probe_inventory(
    *,
    weights_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    backend: NvmlBackend | None = None,
    host: HostInfo | None = None,
) -> NodeInventory:
    """Probe this node: NVML GPUs (visibility variables applied) and host figures.

    ``env`` defaults to ``os.environ``, ``backend`` to the real NVML library, ``host`` to
    ``probe_host(weights_dir)``. Never raises for a missing driver or GPU: the answer then has
    ``gpus=()``, ``source="none"`` and ``no_gpu_reason``.
    """
    env = os.environ if env is None else env
    backend = backend if backend is not None else default_backend(env)
    host = host if host is not None else probe_host(weights_dir)
    notes: list[str] = []

    driver: str | None = None
    cuda: str | None = None

    def no_gpu(reason: str) -> NodeInventory:
        return NodeInventory(
            gpus=(),
            host=host,
            source="none",
            no_gpu_reason=reason,
            notes=tuple(notes),
            driver_version=driver,
            cuda_driver_version=cuda,
        )

    try:
        backend.init()
    except NvmlCallError as exc:
        return no_gpu(_reason_for_init_error(exc))
    try:
        try:
            driver = backend.driver_version()
        except NvmlCallError:
            pass
        try:
            cuda = _cuda_version_text(backend.cuda_driver_version())
        except NvmlCallError:
            pass
        try:
            cands = _enumerate(backend, notes)
            physical = backend.device_count()
        except NvmlCallError as exc:
            return no_gpu(f"NVML could not list the GPUs: {exc.text}")
        if not cands:
            if notes or physical:
                return no_gpu("NVML found no usable NVIDIA GPU on this node")
            return no_gpu("NVML found no NVIDIA GPU on this node")
        cands, reason = _apply_nvidia_visible(cands, env.get("NVIDIA_VISIBLE_DEVICES"), physical, notes)
        if reason is None:
            _order_note(cands, env, notes)
            cands, reason = _apply_cuda_visible(cands, env.get("CUDA_VISIBLE_DEVICES"), notes)
        if reason is not None:
            return no_gpu(reason)
        gpus = tuple(replace(c.gpu, index=i) for i, c in enumerate(cands))
        for g in gpus:
            used = g.total_bytes - g.free_bytes
            if used > _IN_USE_WARN_BYTES:
                notes.append(
                    f"GPU {g.index}: {format_gib(used)} of {format_gib(g.total_bytes)} is already "
                    "in use (another process on this GPU?)"
                )
        if any(g.mig for g in gpus):
            notes.append(
                "MIG slices: a CUDA process uses one slice, so a model must fit a single slice "
                "(no tensor parallelism or NVLink across slices)"
            )
        pairs = _nvlink_pairs(backend, cands, notes)
        all_pairs = len(cands) * (len(cands) - 1) // 2
    finally:
        backend.shutdown()
    # The notes are not logged here: `serve` logs them, `doctor` prints them (once each).
    return NodeInventory(
        gpus=gpus,
        host=host,
        source="nvml",
        driver_version=driver,
        cuda_driver_version=cuda,
        nvlink=bool(pairs) and len(pairs) == all_pairs,
        nvlink_pairs=tuple(pairs),
        notes=tuple(notes),
    )

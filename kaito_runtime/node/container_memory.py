"""The memory this container may still use: its cgroup's limit minus what it uses now.

KAITO sizes CPU KV offload from the host's RAM (psutil), so half the host can exceed the pod's
limit and the kernel kills the pod. We read the memory controller of this process's cgroup
instead, v2 (``memory.max``, ``memory.current``) or v1 (``memory.limit_in_bytes``,
``memory.usage_in_bytes``), the tightest limit on the way up to the root, and count reclaimable
page cache as free as the kubelet does (usage minus ``inactive_file``). With no limit (``max``,
or v1's huge sentinel) the host's available RAM is the answer. Reads files only; ``root`` and
``proc_self_cgroup`` let tests hand in a tree of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")
_V1_NO_LIMIT = 1 << 60  # v1 writes "no limit" as a number near 2**63 (page-aligned)


@dataclass(frozen=True)
class ContainerMemory:
    """How much memory this process's container may still use, and where that figure comes from."""

    available_bytes: int
    limit_bytes: int | None  # None: no cgroup limit (the host's RAM bounds it)
    used_bytes: int | None  # the cgroup's usage minus inactive page cache
    source: str  # e.g. "cgroup v2 /sys/fs/cgroup/memory.max", "host RAM (no cgroup limit)"

    def describe(self) -> str:
        gib = 1024**3
        if self.limit_bytes is None:
            return f"{self.available_bytes / gib:.1f} GiB free ({self.source})"
        return (
            f"{self.available_bytes / gib:.1f} GiB free = limit {self.limit_bytes / gib:.1f} GiB "
            f"- in use {(self.used_bytes or 0) / gib:.1f} GiB ({self.source})"
        )


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_paths(proc_self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 memory path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = path
    return v2, v1


def _ancestors(base: Path, path: str) -> list[Path]:
    """``base/path``, its parents, up to ``base`` itself: deepest first, existing folders only."""
    parts = [p for p in path.strip("/").split("/") if p]
    found = [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [p for p in found if p.is_dir()]


def _v2(root: Path, path: str) -> tuple[int, int, str] | None:
    folders = [f for f in _ancestors(root, path) if (f / "memory.current").exists() or (f / "memory.max").exists()]
    limits = [(value, f / "memory.max") for f in folders if (value := _read_int(f / "memory.max")) is not None]
    if not limits or not folders:
        return None
    limit, where = min(limits)
    current = _read_int(folders[0] / "memory.current") or 0
    used = max(0, current - _stat(folders[0] / "memory.stat", "inactive_file"))
    return limit, used, f"cgroup v2 {where}"


def _v1(root: Path, path: str) -> tuple[int, int, str] | None:
    base = root / "memory" if (root / "memory").is_dir() else root
    folders = [f for f in _ancestors(base, path) if (f / "memory.limit_in_bytes").exists()]
    limits = [
        (value, f / "memory.limit_in_bytes")
        for f in folders
        if (value := _read_int(f / "memory.limit_in_bytes")) is not None and value < _V1_NO_LIMIT
    ]
    if not limits:
        return None
    limit, where = min(limits)
    usage = _read_int(folders[0] / "memory.usage_in_bytes") or 0
    used = max(0, usage - _stat(folders[0] / "memory.stat", "total_inactive_file"))
    return limit, used, f"cgroup v1 {where}"


def container_memory(
    root: Path = CGROUP_ROOT, proc_self_cgroup: Path = PROC_SELF_CGROUP, host_available: int | None = None
) -> ContainerMemory:
    """This container's free memory: min(cgroup limit - usage, the host's available RAM)."""
    host = psutil.virtual_memory().available if host_available is None else host_available
    v2_path, v1_path = _cgroup_paths(proc_self_cgroup)
    found = None
    if v2_path is not None and (root / "cgroup.controllers").exists():
        found = _v2(root, v2_path)
    if found is None and v1_path is not None:
        found = _v1(root, v1_path)
    if found is None:
        return ContainerMemory(host, None, None, "host RAM; no cgroup memory limit")
    limit, used, source = found
    free = max(0, limit - used)
    if host < free:
        return ContainerMemory(host, limit, used, f"{source}, capped by the host's available RAM")
    return ContainerMemory(free, limit, used, source)

"""The inventory against the real NVML library of whatever machine runs the tests.

Without a driver (CI, laptops) it proves the clean "no GPU" answer; on a GPU node (the lead runs
this on an H100) it checks the figures and that CUDA_VISIBLE_DEVICES subsets are honoured.
Skipped only when the pynvml module itself is absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time

import pytest

pynvml = pytest.importorskip("pynvml")

from kaito_runtime.node.inventory import probe_inventory
from tests.support.steps import describe_inventory
from kaito_runtime.node.nvml import RealNvml, record_machine
from kaito_runtime.types import GiB, HostInfo, NodeInventory

pytestmark = pytest.mark.nvml

UUID_RE = re.compile(r"^(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HOST = HostInfo(cpu_count=1, ram_total_bytes=GiB, ram_available_bytes=GiB)


def real(env: dict[str, str] | None = None) -> NodeInventory:
    return probe_inventory(env=env or {}, backend=RealNvml(), host=HOST)


@pytest.fixture(scope="module")
def inv() -> NodeInventory:
    return real()


def test_probe_answers_without_exception_and_quickly() -> None:
    start = time.monotonic()
    result = real()
    assert time.monotonic() - start < 10
    assert result.source in ("nvml", "none")
    assert describe_inventory(result)  # renders either way


def test_no_gpu_answer_or_sane_gpus(inv: NodeInventory) -> None:
    if not inv.gpus:
        assert inv.source == "none"
        reason = inv.no_gpu_reason or ""
        assert "driver" in reason.lower() or "library" in reason.lower() or "no nvidia gpu" in reason.lower()
        return
    assert inv.source == "nvml" and inv.no_gpu_reason is None
    assert inv.gpu_count >= 1
    assert inv.driver_version and re.match(r"^\d+\.\d+", inv.driver_version)
    assert inv.cuda_driver_version and re.match(r"^\d{2}\.\d$", inv.cuda_driver_version)
    for i, g in enumerate(inv.gpus):
        assert g.index == i
        assert g.total_bytes >= g.free_bytes > 0
        assert g.total_bytes > 1 * GiB
        assert (5, 0) <= g.compute_capability <= (15, 9)
        assert UUID_RE.match(g.uuid), g.uuid
        assert g.name.strip()
        assert g.mig == g.uuid.startswith("MIG-")


def test_recording_replays_to_the_same_inventory(inv: NodeInventory) -> None:
    from kaito_runtime.node.nvml import RecordedNvml

    recorded = record_machine(RealNvml(), description="this machine")
    replayed = probe_inventory(env={}, backend=RecordedNvml(recorded), host=HOST)
    assert [g.uuid for g in replayed.gpus] == [g.uuid for g in inv.gpus]
    assert replayed.no_gpu_reason == inv.no_gpu_reason
    assert replayed.nvlink == inv.nvlink


def test_cuda_visible_devices_subset_by_uuid(inv: NodeInventory) -> None:
    if not inv.gpus:
        hidden = real({"CUDA_VISIBLE_DEVICES": "0"})
        assert hidden.gpus == () and hidden.no_gpu_reason == inv.no_gpu_reason
        return
    first = inv.gpus[0]
    one = real({"CUDA_VISIBLE_DEVICES": first.uuid})
    assert [g.uuid for g in one.gpus] == [first.uuid]
    assert one.gpus[0].index == 0
    assert one.nvlink is False
    last = inv.gpus[-1]
    by_index = real({"CUDA_VISIBLE_DEVICES": str(inv.gpu_count - 1)})
    assert [g.uuid for g in by_index.gpus] == [last.uuid]


def test_cuda_visible_devices_hiding(inv: NodeInventory) -> None:
    for value in ("", "-1"):
        hidden = real({"CUDA_VISIBLE_DEVICES": value})
        assert hidden.gpus == ()
        if inv.gpus:
            assert "CUDA_VISIBLE_DEVICES" in (hidden.no_gpu_reason or "")
    if inv.gpus:
        truncated = real({"CUDA_VISIBLE_DEVICES": f"0,{inv.gpu_count + 7}"})
        assert truncated.gpu_count == 1
        assert any("CUDA_VISIBLE_DEVICES entry" in n for n in truncated.notes)


def test_nvidia_visible_devices_none(inv: NodeInventory) -> None:
    hidden = real({"NVIDIA_VISIBLE_DEVICES": "none"})
    assert hidden.gpus == ()


def test_matches_nvidia_smi(inv: NodeInventory) -> None:
    smi = shutil.which("nvidia-smi")
    if smi is None or not inv.gpus or any(g.mig for g in inv.gpus):
        return  # nothing to compare against (MIG slices are listed differently by nvidia-smi)
    out = subprocess.run(
        [smi, "--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    rows = [line.split(", ") for line in out.strip().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(g.uuid for g in inv.gpus)
    by_uuid = {r[0]: int(r[1]) for r in rows}
    for g in inv.gpus:
        assert abs(g.total_bytes // 1024**2 - by_uuid[g.uuid]) <= 1

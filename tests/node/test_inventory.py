"""Inventory from recorded NVML answers: machines we do not have, visibility variables, failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from kaito_runtime.node.inventory import (
    _cgroup_cpu_limit,
    _cgroup_memory,
    probe_host,
    probe_inventory,
)
from kaito_runtime.node.nvml import NvmlBackend, NvmlCallError, RecordedNvml, record_machine
from tests.support.steps import describe_inventory
from kaito_runtime.types import GiB, HostInfo

DATA = Path(__file__).parents[1] / "data" / "nvml"
HOST = HostInfo(cpu_count=8, ram_total_bytes=64 * GiB, ram_available_bytes=60 * GiB)


def machine(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def probe(name_or_data: str | dict, **env: str):
    data = machine(name_or_data) if isinstance(name_or_data, str) else name_or_data
    backend = RecordedNvml(data)
    inv = probe_inventory(env=env, backend=backend, host=HOST)
    assert not backend.initialised, "NVML must be shut down after probing"
    return inv


def uuids(name: str) -> list[str]:
    return [d["uuid"] for d in machine(name)["devices"]]


# --- whole machines --------------------------------------------------------------------------


def test_recorded_backend_satisfies_protocol() -> None:
    assert isinstance(RecordedNvml({}), NvmlBackend)


def test_eight_h100_sxm_with_nvlink() -> None:
    inv = probe("h100-sxm-8x")
    assert inv.source == "nvml" and inv.no_gpu_reason is None
    assert inv.gpu_count == 8
    assert [g.index for g in inv.gpus] == list(range(8))
    assert inv.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert inv.gpus[0].total_bytes == 81559 * 1024**2
    assert inv.gpus[0].free_bytes < inv.gpus[0].total_bytes
    assert inv.gpus[0].compute_capability == (9, 0)
    assert inv.gpus[3].pci_bus_id == "00000000:5D:00.0"
    assert inv.driver_version == "550.54.15"
    assert inv.cuda_driver_version == "12.4"
    assert inv.nvlink is True
    assert inv.notes == ()


def test_four_a100_pcie_without_nvlink() -> None:
    inv = probe("a100-80gb-pcie-4x")
    assert inv.gpu_count == 4
    assert inv.nvlink is False  # the P2P query raises NotSupported: not connected
    assert inv.cuda_driver_version == "12.2"
    assert all(not g.mig for g in inv.gpus)
    assert inv.notes == ()


def test_single_a10() -> None:
    inv = probe("a10-1x")
    assert inv.gpu_count == 1
    assert inv.gpus[0].compute_capability == (8, 6)
    assert inv.nvlink is False  # one GPU: no pair to connect


def test_mig_slices_replace_the_parent() -> None:
    inv = probe("a100-mig-2slices")
    assert inv.gpu_count == 2
    assert all(g.mig for g in inv.gpus)
    assert all(g.uuid.startswith("MIG-") for g in inv.gpus)
    assert inv.gpus[0].total_bytes == 40192 * 1024**2  # the slice, not the 80 GB parent
    assert inv.gpus[1].index == 1
    assert inv.nvlink is False
    assert any("MIG" in n and "one slice" in n for n in inv.notes)


def test_mig_mode_without_slices_is_no_gpu_with_a_note() -> None:
    data = machine("a100-mig-2slices")
    data["devices"][0]["mig_devices"] = []
    inv = probe(data)
    assert inv.gpus == () and inv.source == "none"
    assert "no usable" in inv.no_gpu_reason
    assert any("no MIG slices" in n for n in inv.notes)


def test_partial_nvlink_is_not_nvlink_and_names_the_pairs() -> None:
    inv = probe("h100-nvl-4x-pairs")
    assert inv.nvlink is False
    assert any("0-1, 2-3" in n for n in inv.notes)
    # the bridged pair alone is fully connected
    inv2 = probe("h100-nvl-4x-pairs", CUDA_VISIBLE_DEVICES="2,3")
    assert inv2.nvlink is True and inv2.notes == ()


def test_nvlink_pairs_are_kept_in_cuda_order() -> None:
    assert probe("h100-nvl-4x-pairs").nvlink_pairs == ((0, 1), (2, 3))
    # hiding GPU 0 renumbers the rest: the 2-3 bridge becomes 1-2
    assert probe("h100-nvl-4x-pairs", CUDA_VISIBLE_DEVICES="1,2,3").nvlink_pairs == ((1, 2),)
    assert probe("a100-80gb-pcie-4x").nvlink_pairs == ()
    full = probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES="0,1,2")
    assert full.nvlink and full.nvlink_pairs == ((0, 1), (0, 2), (1, 2))
    assert probe("a10-1x").nvlink_pairs == ()


def test_doctor_names_the_nvlink_pairs() -> None:
    assert "NVLink: pairs 0-1, 2-3 only; the other pairs talk over PCIe" in describe_inventory(
        probe("h100-nvl-4x-pairs")
    )
    assert "NVLink: none; GPUs talk over PCIe" in describe_inventory(probe("a100-80gb-pcie-4x"))
    assert "NVLink: all GPU pairs" in describe_inventory(probe("h100-sxm-8x"))
    assert not any(line.startswith("NVLink") for line in describe_inventory(probe("a10-1x")))


def test_lost_gpu_is_left_out_with_a_note() -> None:
    data = machine("a100-80gb-pcie-4x")
    data["devices"][1] = {"error": {"code": 15, "text": "GPU is lost"}}
    inv = probe(data)
    assert inv.gpu_count == 3
    assert [g.index for g in inv.gpus] == [0, 1, 2]
    assert any("GPU 1" in n and "GPU is lost" in n for n in inv.notes)


def test_memory_in_use_warns() -> None:
    data = machine("a10-1x")
    data["devices"][0]["free_bytes"] = 10 * GiB
    inv = probe(data)
    assert any("already in use" in n for n in inv.notes)


# --- failures: never a traceback -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("library-not-found", "libnvidia-ml.so.1"),
        ("driver-not-loaded", "kernel module is not loaded"),
        ("rm-version-mismatch", "different versions"),
        ("zero-gpus", "found no NVIDIA GPU"),
    ],
)
def test_no_gpu_answers(name: str, words: str) -> None:
    inv = probe(name)
    assert inv.gpus == ()
    assert inv.source == "none"
    assert not inv.has_gpu
    assert words in inv.no_gpu_reason
    assert describe_inventory(inv)[0] == f"No GPU: {inv.no_gpu_reason}"


def test_unknown_init_error_is_reported_with_its_code() -> None:
    inv = probe({"init_error": {"code": 4, "text": "Insufficient Permissions"}})
    assert inv.gpus == () and "Insufficient Permissions" in inv.no_gpu_reason and "4" in inv.no_gpu_reason


def test_missing_python_module_is_a_clean_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from kaito_runtime.node.nvml import RealNvml

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import now raises ImportError
    inv = probe_inventory(env={}, backend=RealNvml(), host=HOST)
    assert inv.gpus == () and "nvidia-ml-py" in inv.no_gpu_reason


# --- CUDA_VISIBLE_DEVICES -------------------------------------------------------------------------


def test_cuda_visible_by_index_renumbers_from_zero() -> None:
    inv = probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES="5,2")
    ids = uuids("h100-sxm-8x")
    assert [g.uuid for g in inv.gpus] == [ids[5], ids[2]]  # CUDA order = the variable's order
    assert [g.index for g in inv.gpus] == [0, 1]
    assert inv.nvlink is True


def test_cuda_visible_by_uuid_and_prefix() -> None:
    ids = uuids("a100-80gb-pcie-4x")
    inv = probe("a100-80gb-pcie-4x", CUDA_VISIBLE_DEVICES=f"{ids[3]}, {ids[1][:12]}")
    assert [g.uuid for g in inv.gpus] == [ids[3], ids[1]]


def test_cuda_visible_by_mig_uuid() -> None:
    slices = machine("a100-mig-2slices")["devices"][0]["mig_devices"]
    inv = probe("a100-mig-2slices", CUDA_VISIBLE_DEVICES=slices[1]["uuid"])
    assert [g.uuid for g in inv.gpus] == [slices[1]["uuid"]]
    assert inv.gpus[0].index == 0 and inv.gpus[0].mig


@pytest.mark.parametrize("value", ["", " ", "-1"])
def test_cuda_visible_hiding_everything(value: str) -> None:
    inv = probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES=value)
    assert inv.gpus == () and inv.source == "none"
    assert "CUDA_VISIBLE_DEVICES" in inv.no_gpu_reason
    assert inv.notes == ()  # the usual idioms are not warnings


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("0,1,9,2", 2),  # out of range
        ("1,GPU-00000000-dead", 1),  # unknown uuid
        ("3,3,1", 1),  # a repeat
        ("0,-1,1", 1),
        ("0,foo", 1),
    ],
)
def test_cuda_visible_truncates_at_first_invalid_entry(value: str, kept: int) -> None:
    inv = probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES=value)
    assert inv.gpu_count == kept
    assert any("CUDA_VISIBLE_DEVICES entry" in n for n in inv.notes)


def test_cuda_visible_invalid_first_entry_is_no_gpu_with_warning() -> None:
    inv = probe("a10-1x", CUDA_VISIBLE_DEVICES="GPU-ffffffff")
    assert inv.gpus == () and "selects no GPU" in inv.no_gpu_reason
    assert any("GPU-ffffffff" in n for n in inv.notes)


def test_index_on_mixed_models_warns_about_order() -> None:
    data = machine("a100-80gb-pcie-4x")
    data["devices"][0]["name"] = "NVIDIA A10"
    assert any("CUDA_DEVICE_ORDER" in n for n in probe(data, CUDA_VISIBLE_DEVICES="0").notes)
    assert not any(
        "CUDA_DEVICE_ORDER" in n
        for n in probe(data, CUDA_VISIBLE_DEVICES="0", CUDA_DEVICE_ORDER="PCI_BUS_ID").notes
    )


# --- NVIDIA_VISIBLE_DEVICES -----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["none", "void", "NONE"])
def test_nvidia_visible_none_and_void(value: str) -> None:
    inv = probe("h100-sxm-8x", NVIDIA_VISIBLE_DEVICES=value)
    assert inv.gpus == () and "NVIDIA_VISIBLE_DEVICES" in inv.no_gpu_reason


@pytest.mark.parametrize("value", ["all", ""])
def test_nvidia_visible_all_or_empty_keeps_all(value: str) -> None:
    assert probe("h100-sxm-8x", NVIDIA_VISIBLE_DEVICES=value).gpu_count == 8


def test_nvidia_visible_uuids_then_cuda_index() -> None:
    ids = uuids("h100-sxm-8x")
    inv = probe("h100-sxm-8x", NVIDIA_VISIBLE_DEVICES=f"{ids[6]},{ids[4]}", CUDA_VISIBLE_DEVICES="1")
    # the runtime exposes them in bus order: 4 then 6; CUDA index 1 is GPU 6
    assert [g.uuid for g in inv.gpus] == [ids[6]]


def test_nvidia_visible_indices_on_a_host_filter() -> None:
    inv = probe("h100-sxm-8x", NVIDIA_VISIBLE_DEVICES="2,3")
    assert [g.uuid for g in inv.gpus] == uuids("h100-sxm-8x")[2:4]


def test_nvidia_visible_indices_already_applied_inside_a_container() -> None:
    data = machine("a100-80gb-pcie-4x")
    data["devices"] = data["devices"][:2]  # the runtime injected 2 GPUs, NVML numbers them 0, 1
    assert probe(data, NVIDIA_VISIBLE_DEVICES="2,3").gpu_count == 2


def test_nvidia_visible_unknown_uuid() -> None:
    inv = probe("a10-1x", NVIDIA_VISIBLE_DEVICES="GPU-12345678-0000-0000-0000-000000000000")
    assert inv.gpus == () and "matches no GPU" in inv.no_gpu_reason


def test_nvidia_visible_mig_uuid() -> None:
    slices = machine("a100-mig-2slices")["devices"][0]["mig_devices"]
    inv = probe("a100-mig-2slices", NVIDIA_VISIBLE_DEVICES=slices[0]["uuid"])
    assert [g.uuid for g in inv.gpus] == [slices[0]["uuid"]]


# --- recording round trip -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["h100-sxm-8x", "a100-80gb-pcie-4x", "a100-mig-2slices", "h100-nvl-4x-pairs", "driver-not-loaded"]
)
def test_record_machine_round_trips(name: str) -> None:
    original = probe(name)
    recorded = record_machine(RecordedNvml(machine(name)), description=name)
    replayed = probe(copy.deepcopy(recorded))
    assert replayed == original


def test_recorded_backend_requires_init() -> None:
    with pytest.raises(NvmlCallError):
        RecordedNvml(machine("a10-1x")).device_count()


# --- host -----------------------------------------------------------------------------------------


def test_probe_host_measures_nearest_existing_folder(tmp_path: Path) -> None:
    h = probe_host(tmp_path / "not" / "yet" / "weights", cgroup_root=tmp_path / "nocgroup")
    assert h.cpu_count >= 1
    assert h.ram_total_bytes >= h.ram_available_bytes > 0
    assert h.disk_free_bytes and h.disk_free_bytes > 0
    assert h.disk_path == str(tmp_path / "not" / "yet" / "weights")
    assert probe_host(None, cgroup_root=tmp_path).disk_free_bytes is None


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    (tmp_path / "memory.max").write_text(str(2 * GiB))
    (tmp_path / "memory.current").write_text(str(GiB // 2))
    assert _cgroup_cpu_limit(tmp_path) == 1.5
    assert _cgroup_memory(tmp_path) == (2 * GiB, GiB // 2)
    h = probe_host(None, cgroup_root=tmp_path)
    assert h.cpu_count <= 2
    assert h.ram_total_bytes <= 2 * GiB
    assert h.ram_available_bytes <= GiB + GiB // 2


def test_cgroup_unlimited(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_cpu_limit(tmp_path) is None
    assert _cgroup_memory(tmp_path) == (None, None)


def test_cgroup_v1(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(str(9223372036854771712))
    assert _cgroup_cpu_limit(tmp_path) == 4.0
    assert _cgroup_memory(tmp_path) == (None, None)


# --- description ----------------------------------------------------------------------------------


def test_describe_inventory_lines() -> None:
    lines = describe_inventory(probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES="0"))
    assert lines[0].startswith("GPUs: 1 (probed with NVML, driver 550.54.15, CUDA 12.4")
    assert lines[1].startswith("GPU 0: NVIDIA H100 80GB HBM3, 79.6 GiB total, 79.1 GiB free, CC 9.0, uuid GPU-")
    assert lines[2].startswith("Host: 8 CPUs, 64.0 GiB RAM")


def test_describe_inventory_shows_warnings() -> None:
    lines = describe_inventory(probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES="0,42"))
    assert any(line.startswith("Warning: CUDA_VISIBLE_DEVICES entry '42'") for line in lines)


def test_real_h100_recording_from_the_device_machine() -> None:
    # recorded with record_machine(RealNvml()) on a one-H100 machine (driver 580.159.04)
    inv = probe("h100-sxm-1x-real")
    assert inv.gpu_count == 1 and inv.nvlink is False
    g = inv.gpus[0]
    assert g.name == "NVIDIA H100 80GB HBM3" and g.compute_capability == (9, 0)
    assert g.total_bytes == 81559 * 1024**2
    assert inv.cuda_driver_version == "13.0"


def test_no_gpu_answer_keeps_driver_versions() -> None:
    inv = probe("zero-gpus")
    assert inv.driver_version == "550.54.15" and inv.cuda_driver_version == "12.4"
    hidden = probe("h100-sxm-8x", CUDA_VISIBLE_DEVICES="")
    assert hidden.driver_version == "550.54.15"


def test_recording_named_in_the_environment_replaces_nvml() -> None:
    env = {"KAITO_NVML_RECORDING": str(DATA / "h100-sxm-8x.json"), "CUDA_VISIBLE_DEVICES": "0,1"}
    inv = probe_inventory(env=env, host=HOST)
    assert inv.gpu_count == 2 and inv.nvlink is True


def test_unreadable_recording_is_a_no_gpu_reason(tmp_path: Path) -> None:
    env = {"KAITO_NVML_RECORDING": str(tmp_path / "missing.json")}
    inv = probe_inventory(env=env, host=HOST)
    assert inv.gpus == () and "KAITO_NVML_RECORDING" in inv.no_gpu_reason

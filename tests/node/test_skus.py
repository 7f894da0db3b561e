"""The GPU SKU table: validation, machine lookup, --assume-gpus parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaito_runtime.errors import CatalogError, InputError, UnknownSkuError
from tests.support.steps import describe_inventory
from kaito_runtime.node.skus import (
    find_gpu_model,
    inventory_for_assumed_gpus,
    inventory_for_sku,
    load_sku_table,
    parse_assumed_gpus,
)
from kaito_runtime.types import GiB, HostInfo

# Every row of the reference tables (cluster-conventions.md): name -> (GPU key, count).
REFERENCE_ROWS = {
    "Standard_NV36ads_A10_v5": ("A10", 1),
    "Standard_NV72ads_A10_v5": ("A10", 2),
    "Standard_NC24ads_A100_v4": ("A100-80GB-PCIe", 1),
    "Standard_NC48ads_A100_v4": ("A100-80GB-PCIe", 2),
    "Standard_NC96ads_A100_v4": ("A100-80GB-PCIe", 4),
    "Standard_ND96asr_A100_v4": ("A100-40GB", 8),
    "Standard_ND96amsr_A100_v4": ("A100-80GB", 8),
    "Standard_NC40ads_H100_v5": ("H100-NVL", 1),
    "Standard_NCC40ads_H100_v5": ("H100-NVL", 1),
    "Standard_NC80adis_H100_v5": ("H100-NVL", 2),
    "Standard_ND96isr_H100_v5": ("H100-80GB", 8),
    "Standard_ND96isr_H200_v5": ("H200", 8),
    "p4d.24xlarge": ("A100-40GB", 8),
    "p4de.24xlarge": ("A100-80GB", 8),
    "p5.48xlarge": ("H100-80GB", 8),
    "p5e.48xlarge": ("H200", 8),
    "p5en.48xlarge": ("H200", 8),
    "g5.xlarge": ("A10G", 1),
    "g5.16xlarge": ("A10G", 1),
    "g5.12xlarge": ("A10G", 4),
    "g5.24xlarge": ("A10G", 4),
    "g5.48xlarge": ("A10G", 8),
    "g6.xlarge": ("L4", 1),
    "gr6.8xlarge": ("L4", 1),
    "g6.12xlarge": ("L4", 4),
    "g6.48xlarge": ("L4", 8),
    "a2-highgpu-8g": ("A100-40GB", 8),
    "a2-megagpu-16g": ("A100-40GB", 16),
    "a2-ultragpu-4g": ("A100-80GB", 4),
    "a3-highgpu-8g": ("H100-80GB", 8),
    "a3-edgegpu-8g": ("H100-80GB", 8),
    "a3-ultragpu-8g": ("H200", 8),
    "g2-standard-96": ("L4", 8),
}


def test_table_loads_and_is_complete() -> None:
    table = load_sku_table()
    names = {m.name for m in table.machines}
    assert set(REFERENCE_ROWS) <= names
    for name, (key, count) in REFERENCE_ROWS.items():
        inv = inventory_for_sku(name)
        assert inv.gpu_count == count, name
        assert inv.gpus[0].name == table.gpu_model(key).nvml_name, name
    assert {"A10", "A10G", "L4", "A100-40GB", "A100-80GB", "H100-80GB", "H100-NVL", "H200"} <= {
        g.key for g in table.gpus
    }


@pytest.mark.parametrize(
    ("key", "gib", "cc"),
    [
        ("A10", 22.5, (8, 6)),
        ("A10G", 22.5, (8, 6)),
        ("L4", 22.5, (8, 9)),
        ("A100-40GB", 40.0, (8, 0)),
        ("A100-80GB", 80.0, (8, 0)),
        ("H100-80GB", 79.6, (9, 0)),
        ("H100-NVL", 93.6, (9, 0)),
        ("H200", 140.4, (9, 0)),
    ],
)
def test_gpu_memory_is_what_nvml_reports(key: str, gib: float, cc: tuple[int, int]) -> None:
    model = find_gpu_model(key)
    assert model is not None
    assert abs(model.memory_mib * 1024**2 / GiB - gib) < 0.1
    assert model.cc == cc


@pytest.mark.parametrize(
    ("sku", "nvlink"),
    [
        ("Standard_ND96isr_H100_v5", True),
        ("Standard_ND96amsr_A100_v4", True),
        ("p4d.24xlarge", True),
        ("p5.48xlarge", True),
        ("a3-highgpu-8g", True),
        ("Standard_NC80adis_H100_v5", True),  # NVLink-bridged H100 NVL pair
        ("Standard_NC96ads_A100_v4", False),
        ("Standard_NV72ads_A10_v5", False),
        ("g6.48xlarge", False),
        ("g5.48xlarge", False),
        ("Standard_NC40ads_H100_v5", False),  # one GPU: nothing to link
    ],
)
def test_nvlink_by_sku(sku: str, nvlink: bool) -> None:
    assert inventory_for_sku(sku).nvlink is nvlink


def test_sku_inventory_shape() -> None:
    inv = inventory_for_sku("standard_nd96isr_h100_v5")  # any case
    assert inv.source == "sku" and inv.label == "Standard_ND96isr_H100_v5"
    assert [g.index for g in inv.gpus] == list(range(8))
    assert all(g.free_bytes == g.total_bytes for g in inv.gpus)
    assert len({g.uuid for g in inv.gpus}) == 8
    assert inv.host.cpu_count == 96 and inv.host.ram_total_bytes == 1900 * GiB
    assert inv.host.disk_free_bytes is None
    assert inv.no_gpu_reason is None and inv.has_gpu


def test_sku_without_standard_prefix_and_given_host() -> None:
    host = HostInfo(cpu_count=3, ram_total_bytes=GiB, ram_available_bytes=GiB)
    inv = inventory_for_sku("NC24ads_A100_v4", host=host)
    assert inv.label == "Standard_NC24ads_A100_v4" and inv.host is host


def test_unknown_sku_suggests_close_names() -> None:
    with pytest.raises(UnknownSkuError) as err:
        inventory_for_sku("Standard_ND96isr_H100_v4")
    assert err.value.exit_code == 2
    assert "Standard_ND96isr_H100_v5" in err.value.message
    assert "Standard_ND96isr_H100_v4" in err.value.message
    with pytest.raises(UnknownSkuError) as err2:
        inventory_for_sku("p5.48xlarg")
    assert "p5.48xlarge" in err2.value.message
    assert err2.value.why.startswith("Closest known names: ")
    assert len(err2.value.why.split(": ", 1)[1].split(", ")) <= 3


def test_unknown_sku_without_close_names_still_explains() -> None:
    with pytest.raises(UnknownSkuError) as err:
        inventory_for_sku("zzzz")
    assert "--assume-gpus" in err.value.message
    assert err.value.why == f"It is none of the {len(load_sku_table().machines)} machine SKUs in the GPU SKU table"


def test_planned_inventories_list_their_nvlink_pairs() -> None:
    assert inventory_for_sku("Standard_NC80adis_H100_v5").nvlink_pairs == ((0, 1),)
    assert len(inventory_for_sku("Standard_ND96isr_H100_v5").nvlink_pairs) == 28  # 8 choose 2
    assert inventory_for_sku("Standard_NC96ads_A100_v4").nvlink_pairs == ()
    assert inventory_for_assumed_gpus("4xH100-80GB").nvlink_pairs == ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))
    assert inventory_for_assumed_gpus("1xH100-80GB").nvlink_pairs == ()


# --- --assume-gpus ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "key"),
    [
        ("4xA100-80GB", 4, "A100-80GB"),
        ("A10", 1, "A10"),
        ("8xH200", 8, "H200"),
        ("2xH100-80GB", 2, "H100-80GB"),
        ("2 x h100", 2, "H100-80GB"),
        ("1XL4", 1, "L4"),
        ("2xNVIDIA H100 NVL", 2, "H100-NVL"),
        ("4xA100 80GB PCIe", 4, "A100-80GB-PCIe"),
    ],
)
def test_assume_gpus_parses(text: str, count: int, key: str) -> None:
    n, model = parse_assumed_gpus(text)
    assert (n, model.key) == (count, key)
    inv = inventory_for_assumed_gpus(text)
    assert inv.gpu_count == count and inv.source == "assumed" and inv.label == text.strip()
    assert inv.gpus[0].total_bytes == model.memory_mib * 1024**2


def test_assume_gpus_nvlink_follows_model() -> None:
    assert inventory_for_assumed_gpus("8xH100-80GB").nvlink is True
    assert inventory_for_assumed_gpus("4xA100-80GB-PCIe").nvlink is False
    assert inventory_for_assumed_gpus("1xH200").nvlink is False


def test_assume_gpus_host_defaults_to_unknown() -> None:
    inv = inventory_for_assumed_gpus("A10")
    assert inv.host.cpu_count == 0 and inv.host.disk_free_bytes is None
    host = HostInfo(cpu_count=2, ram_total_bytes=GiB, ram_available_bytes=GiB)
    assert inventory_for_assumed_gpus("A10", host=host).host is host


@pytest.mark.parametrize("text", ["", "4x", "0xA10", "-1xA10", "4A100", "x", "4x 8x A10"])
def test_assume_gpus_bad_syntax(text: str) -> None:
    with pytest.raises(InputError) as err:
        parse_assumed_gpus(text)
    assert err.value.exit_code == 2
    msg = err.value.message
    assert repr(text) in msg or isinstance(err.value, UnknownSkuError)
    if not isinstance(err.value, UnknownSkuError):
        assert "4xA100-80GB" in msg  # names the expected form


def test_assume_gpus_unknown_model_suggests() -> None:
    with pytest.raises(UnknownSkuError) as err:
        parse_assumed_gpus("4xA100-80G")
    assert err.value.exit_code == 2
    assert "A100-80GB" in err.value.message and "'A100-80G'" in err.value.message


def test_describe_sku_inventory() -> None:
    lines = describe_inventory(inventory_for_sku("Standard_NC80adis_H100_v5"))
    assert lines[0] == "GPUs: 2 (assumed from SKU Standard_NC80adis_H100_v5)"
    assert lines[1].startswith("GPU 0: NVIDIA H100 NVL, 93.6 GiB total, 93.6 GiB free, CC 9.0")
    assert lines[3] == "NVLink: all GPU pairs"


# --- validation of the file -----------------------------------------------------------------------


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "skus.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


GOOD_GPU = {"key": "X1", "nvml_name": "NVIDIA X1", "memory_mib": 100, "compute_capability": "8.0", "nvlink": False}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"gpus": [GOOD_GPU], "machines": [{"name": "m", "cloud": "aws", "gpu": "X2", "count": 1}]}, "X2"),
        ({"gpus": [{**GOOD_GPU, "compute_capability": "eight"}], "machines": []}, "compute_capability"),
        ({"gpus": [{**GOOD_GPU, "memory_mib": 0}], "machines": []}, "memory_mib"),
        ({"gpus": [GOOD_GPU, {**GOOD_GPU, "key": "X9"}], "machines": []}, "used by both"),
        ({"gpus": [{**GOOD_GPU, "colour": "red"}], "machines": []}, "colour"),
        (
            {
                "gpus": [GOOD_GPU],
                "machines": [{"name": "m", "cloud": "aws", "gpu": "X1", "count": 1}] * 2,
            },
            "listed twice",
        ),
        ({"gpus": [GOOD_GPU], "machines": [{"name": "m", "cloud": "ibm", "gpu": "X1", "count": 1}]}, "cloud"),
    ],
)
def test_invalid_table_is_a_catalog_error(tmp_path: Path, data: dict, words: str) -> None:
    with pytest.raises(CatalogError) as err:
        load_sku_table(_write(tmp_path, data))
    assert words in err.value.message and err.value.exit_code == 2


def test_unreadable_table(tmp_path: Path) -> None:
    with pytest.raises(CatalogError):
        load_sku_table(tmp_path / "missing.yaml")


def test_h100_memory_matches_a_real_nvml_recording() -> None:
    import json

    recorded = json.loads((Path(__file__).parents[1] / "data" / "nvml" / "h100-sxm-1x-real.json").read_text())
    dev = recorded["devices"][0]
    model = find_gpu_model(dev["name"])
    assert model is not None and model.key == "H100-80GB"
    assert model.memory_mib * 1024**2 == dev["total_bytes"]
    assert model.cc == tuple(dev["compute_capability"])

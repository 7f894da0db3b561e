"""A narrow interface to NVML: the handful of questions the inventory asks, as plain values.

``RealNvml`` answers them through ``pynvml`` (nvidia-ml-py, imported lazily so a CPU-only box
without the module still starts). ``RecordedNvml`` answers them from a recorded machine (a dict
or a JSON file), which is how the tests describe hardware we do not have. ``record_machine``
writes such a recording from any backend, so a real node can be captured once and replayed.

Every failure crosses this boundary as ``NvmlCallError`` carrying NVML's numeric code, so the
callers never import pynvml.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# NVML return codes the inventory reacts to (values from nvml.h / pynvml).
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18
NVML_ERROR_UNKNOWN = 999
# Our own code for "the pynvml module itself is not importable" (not an NVML code).
MODULE_NOT_INSTALLED = -1

_NVML_P2P_CAPS_INDEX_NVLINK = 2
_NVML_P2P_STATUS_OK = 0
_NVML_DEVICE_MIG_ENABLE = 1
_NVML_INIT_FLAG_NO_GPUS = 1


class NvmlCallError(Exception):
    """An NVML call failed; ``code`` is NVML's return code (or MODULE_NOT_INSTALLED)."""

    def __init__(self, code: int, text: str) -> None:
        self.code = code
        self.text = text
        super().__init__(f"{text} (NVML code {code})")


@dataclass(frozen=True)
class DeviceRecord:
    """One physical GPU as NVML reports it (``index`` is NVML's, i.e. PCI bus order)."""

    index: int
    name: str
    uuid: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int]
    pci_bus_id: str | None = None
    mig_enabled: bool = False


@dataclass(frozen=True)
class MigRecord:
    """One MIG slice of a parent GPU."""

    name: str
    uuid: str
    total_bytes: int
    free_bytes: int


@runtime_checkable
class NvmlBackend(Protocol):
    """The questions the inventory asks NVML. Failures raise ``NvmlCallError``."""

    def init(self) -> None: ...

    def shutdown(self) -> None: ...

    def driver_version(self) -> str: ...

    def cuda_driver_version(self) -> int: ...

    def device_count(self) -> int: ...

    def device(self, index: int) -> DeviceRecord: ...

    def mig_devices(self, index: int) -> list[MigRecord]: ...

    def nvlink_p2p(self, a: int, b: int) -> bool: ...


# ------------------------------------------------------------------------------------------------
# The real library
# ------------------------------------------------------------------------------------------------


class RealNvml:
    """``NvmlBackend`` over pynvml. Handles are looked up per call (they are cheap)."""

    def __init__(self) -> None:
        self._nvml: Any = None

    def _translate(self, exc: Exception) -> NvmlCallError:
        code = getattr(exc, "value", NVML_ERROR_UNKNOWN)
        if not isinstance(code, int):
            code = NVML_ERROR_UNKNOWN
        return NvmlCallError(code, str(exc) or type(exc).__name__)

    def _call(self, fn_name: str, *args: Any) -> Any:
        if self._nvml is None:
            raise NvmlCallError(NVML_ERROR_UNINITIALIZED, "NVML is not initialised")
        try:
            return getattr(self._nvml, fn_name)(*args)
        except self._nvml.NVMLError as exc:
            raise self._translate(exc) from exc

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise NvmlCallError(
                MODULE_NOT_INSTALLED,
                "the Python module pynvml (package nvidia-ml-py) is not installed",
            ) from exc
        try:
            try:
                # Lets init succeed on a node with a driver but zero GPUs; count then says 0.
                pynvml.nvmlInitWithFlags(_NVML_INIT_FLAG_NO_GPUS)
            except pynvml.NVMLError as exc:
                if getattr(exc, "value", None) != NVML_ERROR_FUNCTION_NOT_FOUND:
                    raise
                pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise self._translate(exc) from exc
        self._nvml = pynvml

    def shutdown(self) -> None:
        if self._nvml is None:
            return
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass
        finally:
            self._nvml = None

    def driver_version(self) -> str:
        return str(self._call("nvmlSystemGetDriverVersion"))

    def cuda_driver_version(self) -> int:
        return int(self._call("nvmlSystemGetCudaDriverVersion"))

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount"))

    def _handle(self, index: int) -> Any:
        return self._call("nvmlDeviceGetHandleByIndex", index)

    def device(self, index: int) -> DeviceRecord:
        h = self._handle(index)
        mem = self._call("nvmlDeviceGetMemoryInfo", h)
        major, minor = self._call("nvmlDeviceGetCudaComputeCapability", h)
        try:
            bus_id: str | None = str(self._call("nvmlDeviceGetPciInfo", h).busId)
        except NvmlCallError:
            bus_id = None
        try:
            mig_enabled = self._call("nvmlDeviceGetMigMode", h)[0] == _NVML_DEVICE_MIG_ENABLE
        except NvmlCallError:
            mig_enabled = False  # NotSupported on GPUs without MIG
        return DeviceRecord(
            index=index,
            name=str(self._call("nvmlDeviceGetName", h)),
            uuid=str(self._call("nvmlDeviceGetUUID", h)),
            total_bytes=int(mem.total),
            free_bytes=int(mem.free),
            compute_capability=(int(major), int(minor)),
            pci_bus_id=bus_id,
            mig_enabled=mig_enabled,
        )

    def mig_devices(self, index: int) -> list[MigRecord]:
        h = self._handle(index)
        slices: list[MigRecord] = []
        for slot in range(int(self._call("nvmlDeviceGetMaxMigDeviceCount", h))):
            try:
                mh = self._call("nvmlDeviceGetMigDeviceHandleByIndex", h, slot)
            except NvmlCallError as exc:
                if exc.code == NVML_ERROR_NOT_FOUND:  # empty slot
                    continue
                raise
            mem = self._call("nvmlDeviceGetMemoryInfo", mh)
            slices.append(
                MigRecord(
                    name=str(self._call("nvmlDeviceGetName", mh)),
                    uuid=str(self._call("nvmlDeviceGetUUID", mh)),
                    total_bytes=int(mem.total),
                    free_bytes=int(mem.free),
                )
            )
        return slices

    def nvlink_p2p(self, a: int, b: int) -> bool:
        status = self._call(
            "nvmlDeviceGetP2PStatus", self._handle(a), self._handle(b), _NVML_P2P_CAPS_INDEX_NVLINK
        )
        return int(status) == _NVML_P2P_STATUS_OK


# ------------------------------------------------------------------------------------------------
# A recorded machine
# ------------------------------------------------------------------------------------------------


def _error_from(spec: Mapping[str, Any] | int | None, default_text: str) -> NvmlCallError | None:
    if spec is None:
        return None
    if isinstance(spec, int):
        return NvmlCallError(spec, default_text)
    return NvmlCallError(int(spec["code"]), str(spec.get("text", default_text)))


class RecordedNvml:
    """``NvmlBackend`` answering from a recording.

    Recording format (JSON or dict)::

        {"init_error": {"code": 12, "text": "..."} | null,
         "driver_version": "550.54.15", "cuda_driver_version": 12040,
         "devices": [{"name", "uuid", "pci_bus_id", "total_bytes", "free_bytes",
                      "compute_capability": [9, 0], "mig_enabled": false,
                      "mig_devices": [{"name", "uuid", "total_bytes", "free_bytes"}],
                      "error": {"code": 15, "text": "GPU is lost"}}],
         "nvlink_groups": [[0, 1, 2, 3]],      # every pair inside a group answers OK
         "p2p_error": {"code": 3, ...} | null} # what P2P queries outside a group raise

    Outside every group a P2P query answers "not OK", or raises ``p2p_error`` when given (PCIe
    cards without NVLink raise NotSupported on the real library).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.initialised = False
        self.shutdowns = 0
        self._groups = [set(g) for g in data.get("nvlink_groups", [])]

    @classmethod
    def from_file(cls, path: str | Path) -> RecordedNvml:
        return cls(json.loads(Path(path).read_text()))

    def _check(self) -> None:
        if not self.initialised:
            raise NvmlCallError(NVML_ERROR_UNINITIALIZED, "Uninitialized")

    def init(self) -> None:
        err = _error_from(self.data.get("init_error"), "NVML init failed")
        if err:
            raise err
        self.initialised = True

    def shutdown(self) -> None:
        self.initialised = False
        self.shutdowns += 1

    def driver_version(self) -> str:
        self._check()
        return str(self.data.get("driver_version", "0.0"))

    def cuda_driver_version(self) -> int:
        self._check()
        return int(self.data.get("cuda_driver_version", 0))

    def device_count(self) -> int:
        self._check()
        return len(self.data.get("devices", []))

    def _dev(self, index: int) -> Mapping[str, Any]:
        self._check()
        devices = self.data.get("devices", [])
        if not 0 <= index < len(devices):
            raise NvmlCallError(2, "Invalid Argument")
        dev = devices[index]
        err = _error_from(dev.get("error"), "device query failed")
        if err:
            raise err
        return dev

    def device(self, index: int) -> DeviceRecord:
        dev = self._dev(index)
        major, minor = dev["compute_capability"]
        return DeviceRecord(
            index=index,
            name=dev["name"],
            uuid=dev["uuid"],
            total_bytes=int(dev["total_bytes"]),
            free_bytes=int(dev["free_bytes"]),
            compute_capability=(int(major), int(minor)),
            pci_bus_id=dev.get("pci_bus_id"),
            mig_enabled=bool(dev.get("mig_enabled", False)),
        )

    def mig_devices(self, index: int) -> list[MigRecord]:
        dev = self._dev(index)
        return [
            MigRecord(m["name"], m["uuid"], int(m["total_bytes"]), int(m["free_bytes"]))
            for m in dev.get("mig_devices", [])
        ]

    def nvlink_p2p(self, a: int, b: int) -> bool:
        self._dev(a), self._dev(b)
        if any(a in g and b in g for g in self._groups):
            return True
        err = _error_from(self.data.get("p2p_error"), "Not Supported")
        if err:
            raise err
        return False


def record_machine(backend: NvmlBackend, description: str = "") -> dict[str, Any]:
    """Ask ``backend`` everything the inventory needs and return it in RecordedNvml's format."""
    out: dict[str, Any] = {"description": description}
    try:
        backend.init()
    except NvmlCallError as exc:
        out["init_error"] = {"code": exc.code, "text": exc.text}
        return out
    try:
        out["driver_version"] = backend.driver_version()
        out["cuda_driver_version"] = backend.cuda_driver_version()
        devices: list[dict[str, Any]] = []
        for i in range(backend.device_count()):
            try:
                d = backend.device(i)
            except NvmlCallError as exc:
                devices.append({"error": {"code": exc.code, "text": exc.text}})
                continue
            entry: dict[str, Any] = {
                "name": d.name,
                "uuid": d.uuid,
                "pci_bus_id": d.pci_bus_id,
                "total_bytes": d.total_bytes,
                "free_bytes": d.free_bytes,
                "compute_capability": list(d.compute_capability),
                "mig_enabled": d.mig_enabled,
            }
            if d.mig_enabled:
                entry["mig_devices"] = [m.__dict__ for m in backend.mig_devices(i)]
            devices.append(entry)
        out["devices"] = devices
        pairs = []
        for a in range(len(devices)):
            for b in range(a + 1, len(devices)):
                try:
                    if backend.nvlink_p2p(a, b):
                        pairs.append([a, b])
                except NvmlCallError as exc:
                    out["p2p_error"] = {"code": exc.code, "text": exc.text}
        out["nvlink_groups"] = pairs
    finally:
        backend.shutdown()
    return out

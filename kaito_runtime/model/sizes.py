"""A model's exact size from its safetensors headers: parameters and bytes by dtype, the
quantization method and what it stores, and the count that the model card calls its size.

Pure except ``read_header`` (one file's header from disk: 8 bytes of length, then JSON; never
the tensor bytes). The hub's headers come through ``kaito_runtime.hub.safetensors_headers``.
A tensor is ``(dtype, shape, nbytes)``; ``nbytes`` is its ``data_offsets`` span, so the bytes
are exact whatever the dtype (including sub-byte ones).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaito_runtime.errors import InputError
from kaito_runtime.types import WeightsFigures

Tensor = tuple[str, tuple[int, ...], int]  # dtype, shape, bytes
Header = Mapping[str, Tensor]  # tensor name -> tensor, for one file

_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# Tensors that are quantization bookkeeping, not model parameters (AWQ / GPTQ, compressed-tensors,
# FP8 block scales, MXFP4, bitsandbytes): counted in the stored bytes, not in the parameter count.
_AUX_SUFFIXES = (
    ".qzeros", ".scales", ".g_idx",
    ".weight_scale", ".weight_scale_inv", ".weight_zero_point", ".weight_shape", ".weight_g_idx",
    ".weight_global_scale", ".input_global_scale", ".input_scale", ".k_scale", ".v_scale", ".output_scale",
    "_scales",
    ".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".SCB", ".weight_format",
)
_AUX_INFIXES = (".quant_state.",)
_DTYPE_BITS = {"I32": 32, "U32": 32, "I16": 16, "U16": 16, "I8": 8, "U8": 8}


def quantization_config(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(config, Mapping):
        return None
    text = config.get("text_config")
    for layer in (config, text if isinstance(text, Mapping) else {}):
        quant = layer.get("quantization_config")
        if isinstance(quant, dict):
            return quant
    return None


def _weight_bits(quant: Mapping[str, Any]) -> int | None:
    """The bits of one quantized weight, where the config says (AWQ/GPTQ ``bits``, compressed-
    tensors ``config_groups.*.weights.num_bits``, bitsandbytes 4/8)."""
    for key in ("bits", "w_bit", "wbits"):
        if isinstance(quant.get(key), int):
            return quant[key]
    groups = quant.get("config_groups")
    if isinstance(groups, dict):
        for group in groups.values():
            weights = group.get("weights") if isinstance(group, dict) else None
            if isinstance(weights, dict) and isinstance(weights.get("num_bits"), int):
                return weights["num_bits"]
    if quant.get("load_in_4bit") or quant.get("bnb_4bit_quant_type"):
        return 4
    if quant.get("load_in_8bit"):
        return 8
    return None


def _is_aux(name: str) -> bool:
    return name.endswith(_AUX_SUFFIXES) or any(part in name for part in _AUX_INFIXES)


def _unpacked(name: str, dtype: str, elements: int, method: str, bits: int | None) -> int:
    """Model parameters held by one stored tensor of a quantized checkpoint."""
    if method == "mxfp4" and name.endswith("_blocks") and dtype == "U8":
        return elements * 2  # two FP4 values per byte
    packed = name.endswith((".qweight", ".weight_packed")) or (
        method == "bitsandbytes" and name.endswith(".weight") and dtype == "U8" and bits == 4
    )
    if packed and bits and dtype in _DTYPE_BITS and _DTYPE_BITS[dtype] > bits:
        return elements * (_DTYPE_BITS[dtype] // bits)
    return elements


def figures_from_headers(headers: Mapping[str, Header], config: Mapping[str, Any] | None = None) -> WeightsFigures:
    """The figures of the weight files whose headers are given (file name -> header)."""
    quant = quantization_config(config)
    method = str(quant.get("quant_method", "")).lower() if quant else ""
    bits = _weight_bits(quant) if quant else None
    params_by: dict[str, int] = {}
    bytes_by: dict[str, int] = {}
    parameters = aux_bytes = 0
    for header in headers.values():
        for name, (dtype, shape, nbytes) in header.items():
            elements = math.prod(shape)
            params_by[dtype] = params_by.get(dtype, 0) + elements
            bytes_by[dtype] = bytes_by.get(dtype, 0) + nbytes
            if method and _is_aux(name):
                aux_bytes += nbytes
                continue
            parameters += _unpacked(name, dtype, elements, method, bits) if method else elements
    return WeightsFigures(
        source="safetensors headers",
        stored_bytes=sum(bytes_by.values()),
        files=len(headers),
        parameter_count=parameters,
        parameters_by_dtype=tuple(sorted(params_by.items())),
        bytes_by_dtype=tuple(sorted(bytes_by.items())),
        quantization=method or None,
        quantization_bytes=aux_bytes,
    )


def figures_from_file_sizes(sizes: Mapping[str, int], why: str) -> WeightsFigures:
    return WeightsFigures(source="file sizes", stored_bytes=sum(sizes.values()), files=len(sizes), note=why)


NO_SAFETENSORS = "no *.safetensors among the weight files: sizes are the files' sizes, and the parameter count is unknown (pickled *.bin files have no header to read)"


def parse_header(raw: bytes, source: str) -> dict[str, Tensor]:
    """A safetensors header (the JSON after the 8-byte length) -> tensor name -> tensor."""
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(source, f"its header is not JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise _bad(source, "its header is not a JSON object")
    tensors: dict[str, Tensor] = {}
    for name, info in parsed.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            tensors[name] = (str(info["dtype"]), tuple(int(d) for d in info["shape"]), int(end) - int(begin))
        except (KeyError, TypeError, ValueError):
            raise _bad(source, f"tensor {name!r} has no dtype, shape and data_offsets") from None
    return tensors


def read_header(path: Path) -> dict[str, Tensor]:
    """One local file's header, without reading its tensors."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _bad(str(path), "it is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(_MAX_HEADER_BYTES, size - 8):
            raise _bad(str(path), f"its header length ({length} bytes) does not fit the file ({size} bytes)")
        return parse_header(f.read(length), str(path))


def _bad(source: str, why: str) -> InputError:
    return InputError(
        f"{source} is not a readable safetensors file",
        why=why[:1].upper() + why[1:],
        fix="re-fetch the file, or check that the model's weight files are unmodified safetensors",
    )

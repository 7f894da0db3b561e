"""A model in an object store -> ModelSpec, from the store itself before anything loads: the
listing (sizes, versions), config.json, the safetensors index, and each shard's header through
ranged reads (its first bytes only: exact sizes and parameter counts without the tensors).

A store's model must hold safetensors: vLLM's Run:ai streamer loads nothing else.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Mapping
from dataclasses import replace

from kaito_runtime import objstore
from kaito_runtime.errors import InputError, StoreError, StoreNotFoundError, StoreTruncatedError
from kaito_runtime.model.hf_config import spec_from_hf_config
from kaito_runtime.model.sizes import Tensor, figures_from_headers, parse_header
from kaito_runtime.model.sources import SAFETENSORS_INDEX, _indexed, served_name_for, with_figures
from kaito_runtime.model.files import weight_files
from kaito_runtime.objstore import Store, StoreObject, StoreURI
from kaito_runtime.types import ModelSpec

log = logging.getLogger("kaito_runtime")

FIRST_READ = 64 * 1024  # one ranged read holds the header of most shards
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def check_store_model(text: str, env: Mapping[str, str], revision: str | None = None) -> StoreURI:
    """The URI well formed (no network); a --revision is refused: a store has no revisions."""
    uri = objstore.parse_uri(text, env)
    if revision:
        raise InputError(
            f"--revision {revision} cannot be used with {uri.shown}",
            why="an object store holds one copy of the model under its prefix; the launcher pins the objects' versions itself",
            fix="drop --revision, or point --model at the prefix that holds the version you want",
        )
    return uri


def _small_file(store: Store, name: str, faults_where: str) -> dict:
    raw = store.read(name)
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{faults_where}/{name} is not JSON", why=str(exc), fix="upload the model's own file again") from None
    if not isinstance(data, dict):
        raise InputError(f"{faults_where}/{name} is not a JSON object", fix="upload the model's own file again")
    return data


def read_header(store: Store, obj: StoreObject, where: str) -> dict[str, Tensor]:
    """One shard's header by ranged reads (8 bytes of length, then the JSON), checked against the
    object's listed size: a shard shorter than its own header says is a StoreTruncatedError."""
    source = f"{where}/{obj.name}"
    truncated = lambda why: StoreTruncatedError(  # noqa: E731
        f"{source} is truncated ({obj.size} bytes in the store)",
        why=why,
        fix="upload the file again (the copy in the store is incomplete)",
    )
    if obj.size < 8:
        raise truncated("it is shorter than a safetensors header")
    first = store.read(obj.name, 0, min(FIRST_READ, obj.size))
    (length,) = struct.unpack("<Q", first[:8])
    if length > _MAX_HEADER_BYTES:
        raise InputError(f"{source} is not a readable safetensors file", why=f"its header claims {length} bytes",
                         fix="check that the model's weight files are unmodified safetensors")
    if length + 8 > obj.size:
        raise truncated(f"its header alone is {length + 8} bytes")
    raw = first[8:8 + length]
    if len(raw) < length:
        raw += store.read(obj.name, len(first), length + 8 - len(first))
    tensors = parse_header(raw, source)
    header = json.loads(raw)
    data_end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + data_end > obj.size:
        raise truncated(f"its header places tensor bytes up to offset {8 + length + data_end}")
    return tensors


def spec_from_store(
    text: str,
    env: Mapping[str, str],
    *,
    trust_remote_code: bool = False,
    store: Store | None = None,
) -> ModelSpec:
    """The ModelSpec of the model under ``text`` (s3://, gs://, az://), read from the store."""
    uri = objstore.parse_uri(text, env)
    store = store or objstore.open_store(uri, env)
    objects = store.list()
    where = uri.shown
    if not objects:
        raise StoreNotFoundError(
            f"{where} holds no objects (no such prefix)",
            fix="check the prefix in --model: it must be the folder that holds config.json and the *.safetensors",
        )
    version = objstore.version_digest(objects)
    by_name = {o.name: o for o in objects}
    top = [o.name for o in objects if "/" not in o.name]
    if "config.json" not in by_name:
        raise StoreNotFoundError(
            f"{where}/config.json not found",
            why=f"objects there: {', '.join(sorted(top)[:8]) or '(only sub-folders)'}",
            fix="point --model at the prefix that holds the model's config.json",
        )
    shards = [n for n in weight_files(top, "hf") if n.endswith(".safetensors")]
    if not shards:
        raise StoreError(
            f"{where} holds no *.safetensors files",
            why=f"vLLM's Run:ai streamer loads only safetensors; objects there: {', '.join(sorted(top)[:8])}",
            fix="convert the weights to safetensors and upload them, or serve this model from the hub or a folder",
        )
    config = _small_file(store, "config.json", where)
    if SAFETENSORS_INDEX in by_name:
        shards = _indexed(shards, _small_file(store, SAFETENSORS_INDEX, where))
    headers = {n: read_header(store, by_name[n], where) for n in shards}
    figures = figures_from_headers(headers, config)
    spec = spec_from_hf_config(
        config,
        name=served_name_for(uri.prefix or uri.bucket),
        weights_bytes=sum(by_name[n].size for n in shards),
        source=f"{where}/config.json",
        trust_remote_code=trust_remote_code,
    )
    log.info("model: %s: %d objects, %d safetensors shards, version %s (headers read by range)",
             where, len(objects), len(shards), version)
    spec = replace(spec, generated_from="store metadata", store_uri=where, store_version=version)
    return with_figures(spec, figures)

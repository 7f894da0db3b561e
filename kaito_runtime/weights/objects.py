"""The weights step for a model in an object store.

Serving: vLLM streams the tensors itself; this step puts the model's non-tensor files (config,
tokenizer, chat template, generation config, index) where vLLM looks for them,
``$VLLM_ASSETS_CACHE/model_streamer/<hash of the URI>``, on every node. vLLM fetches them only
on the node that builds the config and hands the others that node's path (vLLM #50616): with
the files already in place under the same path on each node, every node finds them.

``--download-only``: a full copy under ``<weights_dir>/<store folder>/<version digest>/`` with
the hub path's guarantees: one downloader per copy (the same file lock), each object streamed
into a partial file named after its version and resumed by a ranged read after a kill, checked
(size; the MD5 of a single-part S3 ETag; safetensors headers against the size) before it is
renamed into place, and a completion marker written last.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from kaito_runtime import objstore
from kaito_runtime.errors import StoreError, StoreTruncatedError
from kaito_runtime.model.files import select_files
from kaito_runtime.objstore import Store, StoreObject, StoreURI
from kaito_runtime.types import RemoteFile
from kaito_runtime.types import format_bytes as fmt_bytes
from kaito_runtime.weights.integrity import size_of
from kaito_runtime.weights.lock import download_lock
from kaito_runtime.weights.store import PARTIAL_DIR, read_marker, remove_partials, write_marker

TENSOR_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".tensors")
ASSETS_DIR_NAME = "streamer-assets"
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")


def assets_cache(env: Mapping[str, str], weights_dir: Path) -> Path:
    """VLLM_ASSETS_CACHE as the user set it, else a folder on the weights volume (the same path
    on every node of a group, and kept across restarts)."""
    return Path(env["VLLM_ASSETS_CACHE"]) if env.get("VLLM_ASSETS_CACHE") else Path(weights_dir) / ASSETS_DIR_NAME


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_assets(
    uri_text: str, env: Mapping[str, str], weights_dir: Path, log: logging.Logger, *, store: Store | None = None
) -> tuple[Path, str, int]:
    """The non-tensor files of the model under ``uri_text`` into vLLM's assets folder for it.
    Returns (that folder, the objects' version digest, the bytes fetched)."""
    uri = objstore.parse_uri(uri_text, env)
    store = store or objstore.open_store(uri, env)
    objects = store.list()
    if not objects:
        raise StoreError(f"{uri.shown} holds no objects any more", fix="check that the model was not deleted or moved")
    folder = objstore.assets_folder(str(assets_cache(env, weights_dir)), uri)
    fetched = 0
    for obj in objects:
        if obj.name.endswith(TENSOR_SUFFIXES):
            continue
        data = store.read(obj.name)
        if len(data) != obj.size:
            raise _short(uri, obj, len(data))
        _write_atomically(folder / obj.name, data)
        fetched += len(data)
    version = objstore.version_digest(objects)
    log.info("weights: %s streams from the store (version %s); its non-tensor files (%s) are in %s",
             uri.shown, version, fmt_bytes(fetched), folder)
    return folder, version, fetched


def _short(uri: StoreURI, obj: StoreObject, got: int) -> StoreTruncatedError:
    return StoreTruncatedError(
        f"{uri.shown}/{obj.name} ended after {got} of its {obj.size} bytes",
        fix="retry; if it persists, upload the object again or check proxies between this node and the store",
    )


# --- --download-only ----------------------------------------------------------------------------


def copy_folder(weights_dir: Path, uri: StoreURI, version: str) -> Path:
    return Path(weights_dir) / uri.folder_name / version


def _partial(folder: Path, obj: StoreObject) -> Path:
    tag = hashlib.sha256(obj.version.encode()).hexdigest()[:16]
    return folder / PARTIAL_DIR / f"{obj.name}.{tag}.part"


def _verify(path: Path, obj: StoreObject, uri: StoreURI) -> str | None:
    """Why the partial file is not ``obj`` (None when it is)."""
    have = size_of(path)
    if have != obj.size:
        return f"{have} of {obj.size} bytes"
    if _MD5_ETAG.match(obj.version) and uri.scheme == "s3":
        h = hashlib.md5()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != obj.version:
            return "its MD5 differs from the object's ETag"
    if obj.name.endswith(".safetensors"):
        with path.open("rb") as fh:
            head = fh.read(8)
        if len(head) < 8 or int.from_bytes(head, "little") + 8 > obj.size:
            return "its safetensors header does not fit the file"
    return None


def _fetch_one(store: Store, uri: StoreURI, folder: Path, obj: StoreObject, log: logging.Logger) -> int:
    """One object into place; returns the bytes received. Resumes a partial of the same version."""
    final = folder / obj.name
    if size_of(final) == obj.size:
        return 0
    part = _partial(folder, obj)
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in (1, 2):
        have = size_of(part)
        if have > obj.size:
            part.unlink()
            have = 0
        if have:
            log.info("weights: resuming %s at %s of %s", obj.name, fmt_bytes(have), fmt_bytes(obj.size))
        received = 0
        if have < obj.size:
            with part.open("ab") as fh:
                for chunk in store.stream(obj.name, have):
                    fh.write(chunk)
                    received += len(chunk)
        problem = _verify(part, obj, uri)
        if problem is None:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, final)
            return received
        part.unlink(missing_ok=True)
        log.warning("weights: %s failed verification (%s); %s", obj.name, problem,
                    "fetching it again" if attempt == 1 else "giving up")
    raise StoreTruncatedError(
        f"{uri.shown}/{obj.name} failed verification twice ({problem})",
        fix="upload the object again, or check proxies between this node and the store",
    )


def download_copy(
    uri_text: str,
    env: Mapping[str, str],
    weights_dir: Path,
    log: logging.Logger,
    *,
    lock_timeout_s: float,
    store: Store | None = None,
) -> tuple[Path, str, int, int, bool]:
    """A complete local copy of the model under ``uri_text``. Returns (folder, version digest,
    bytes received, files, reused)."""
    uri = objstore.parse_uri(uri_text, env)
    store = store or objstore.open_store(uri, env)
    objects = store.list()
    if not objects:
        raise StoreError(f"{uri.shown} holds no objects (no such prefix)", fix="check the prefix in --model")
    by_name = {o.name: o for o in objects}
    chosen = [by_name[n] for n in select_files(by_name, "hf")]
    version = objstore.version_digest(objects)
    folder = copy_folder(weights_dir, uri, version)
    files = [RemoteFile(o.name, o.size) for o in chosen]
    if read_marker(folder, uri.shown, version) is not None:
        log.info("weights: reusing complete copy of %s (version %s) in %s", uri.shown, version, folder)
        return folder, version, 0, len(files), True
    folder.parent.mkdir(parents=True, exist_ok=True)
    total = sum(o.size for o in chosen)
    received = 0
    with download_lock(folder.parent, version, folder, what=f"{uri.shown} (version {version})",
                       timeout_s=lock_timeout_s, log=log):
        if read_marker(folder, uri.shown, version) is not None:
            return folder, version, 0, len(files), True
        folder.mkdir(parents=True, exist_ok=True)
        log.info("weights: copying %d objects (%s) of %s into %s", len(chosen), fmt_bytes(total), uri.shown, folder)
        started = time.monotonic()
        for obj in sorted(chosen, key=lambda o: -o.size):
            received += _fetch_one(store, uri, folder, obj, log)
        remove_partials(folder)
        write_marker(folder, uri.shown, version, "hf", files)
        log.info("weights: %s complete in %s (%.1fs)", uri.shown, folder, time.monotonic() - started)
    return folder, version, received, len(files), False

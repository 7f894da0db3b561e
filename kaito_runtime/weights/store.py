"""The weights folder on disk: where each repo and commit lives, its completion marker, its refs.

Layout (one folder per repo and commit, real files, no symlinks, directly loadable by vLLM)::

    <weights_dir>/<org>--<name>/<commit>/            the files vLLM loads
    <weights_dir>/<org>--<name>/<commit>/.kaito-complete.json   written last: the copy is whole
    <weights_dir>/<org>--<name>/<commit>/.cache/kaito/partial/  files being downloaded (resumable)
    <weights_dir>/<org>--<name>/refs/<branch>        commit a branch resolved to (for --offline)
    <weights_dir>/<org>--<name>/.<commit>.lock       one downloader per repo+commit on the volume

``local_dir`` rather than the HF cache because the folder *is* what vLLM loads (no symlink farm,
which some shared volumes cannot hold), a commit is its own folder (pinning is visible on disk),
and the completion marker sits next to the files it vouches for.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kaito_runtime.hub import COMMIT_RE, RemoteFile
from kaito_runtime.weights.integrity import expected_digest, size_of

MARKER_NAME = ".kaito-complete.json"
PARTIAL_DIR = Path(".cache") / "kaito" / "partial"
MARKER_FORMAT = 1


def repo_folder(weights_dir: Path, repo_id: str) -> Path:
    return Path(weights_dir) / repo_id.replace("/", "--")


def known_commit(root: Path, ref: str) -> str | None:
    """The one rule from a ref to a commit on this volume: a 40-hex ref is its own commit; a
    branch or tag is the commit it last resolved to here (``refs/``), else None (not yet)."""
    return ref if COMMIT_RE.match(ref) else read_ref(root, ref)


def commit_folder(weights_dir: Path, repo_id: str, revision: str | None) -> tuple[Path, str | None]:
    """The folder of ``repo_id@revision`` (default branch ``main``) and its commit when known:
    a ref not resolved on this volume yet names the folder it would get (``ensure_weights``
    then returns the real one)."""
    root = repo_folder(weights_dir, repo_id)
    ref = revision or "main"
    commit = known_commit(root, ref)
    return root / (commit or ref.replace("/", "%2F")), commit


def lock_path(root: Path, commit: str) -> Path:
    return root / f".{commit}.lock"


# --- completion marker ------------------------------------------------------------------------


def read_marker(folder: Path, repo_id: str, commit: str) -> list[RemoteFile] | None:
    """The files the marker vouches for, when the marker is valid and every file has its size
    (sizes only: no hashing), else None."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        return None
    if data.get("repo_id") != repo_id or data.get("revision") != commit:
        return None
    try:
        files = [RemoteFile(f["path"], int(f["size"]), f.get("blob_id"), f.get("sha256")) for f in data.get("files") or []]
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    for f in files:
        try:
            if (folder / f.path).stat().st_size != f.size:
                return None
        except OSError:
            return None
    return files or None


def write_marker(folder: Path, repo_id: str, commit: str, load_format: str, files: Sequence[RemoteFile]) -> None:
    data = {
        "format": MARKER_FORMAT,
        "repo_id": repo_id,
        "revision": commit,
        "load_format": load_format,
        "total_bytes": sum(f.size for f in files),
        "completed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256, "blob_id": f.blob_id} for f in files],
    }
    tmp = folder / f"{MARKER_NAME}.{os.getpid()}.{threading.get_ident()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MARKER_NAME)


def remove_marker(folder: Path) -> None:
    (folder / MARKER_NAME).unlink(missing_ok=True)


# --- refs (branch -> commit, for offline runs) ------------------------------------------------


def _ref_path(root: Path, ref: str) -> Path:
    return root / "refs" / ref.replace("/", "%2F")


def read_ref(root: Path, ref: str) -> str | None:
    try:
        value = _ref_path(root, ref).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value if COMMIT_RE.match(value) else None


def write_ref(root: Path, ref: str, commit: str) -> None:
    path = _ref_path(root, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(commit + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- partial files ----------------------------------------------------------------------------


def partial_path(folder: Path, f: RemoteFile) -> Path:
    """Where ``f`` is downloaded before it is verified; the expected hash is in the name, so bytes
    of another version of the file are never appended to."""
    tag = (expected_digest(f) or "unhashed")[:16]
    return folder / PARTIAL_DIR / f"{f.path}.{tag}.part"


def held_on_disk(folder: Path, files: Sequence[RemoteFile]) -> dict[str, int]:
    """Bytes of each file already on disk: the finished file, else its partial capped at the
    file's size (what a resume does not fetch again)."""
    held = {}
    for f in files:
        final = size_of(folder / f.path)
        held[f.path] = final if final == f.size else min(size_of(partial_path(folder, f)), f.size)
    return held


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder`` (partials included): grows while a download runs."""
    total = 0
    for dirpath, _dirs, names in os.walk(folder):
        for name in names:
            total += size_of(Path(dirpath) / name)
    return total


def remove_partials(folder: Path) -> None:
    """Drop leftovers of files no longer selected (after a complete download)."""
    shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)


def check_weights_dir(path: Path, *, writable: bool = True, create: bool = False) -> None:
    """Refuse, before anything slow, a weights folder that cannot exist (a file is in the way),
    with ``create``, cannot be created, or, with ``writable``, cannot be written.

    ``writable=True`` is for steps that must write (``--download-only``). Serving passes False: a
    read-only volume holding a complete copy is served as it is, and a step that really has to
    write fails there with the weights module's own read-only/permission message.
    ``create=True`` makes the folder (``mkdir -p``) and turns any failure (``/proc/x``, a
    read-only parent, a permission) into the same exit-2 error; an existing folder is accepted
    as it is, read-only or not. Without ``create`` nothing is made: the nearest existing
    ancestor is what is checked.
    """
    from kaito_runtime.errors import InputError

    how = "pass --weights-dir (or set KAITO_WEIGHTS_DIR) to a writable folder"
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        kind = "a file" if probe.exists() else "a broken link"
        raise InputError(
            f"The weights folder {path} cannot be used",
            why=f"It is {kind}, not a folder" if probe == target else f"{probe} is {kind}, not a folder",
            fix=how,
        )
    if create and not target.is_dir():
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(
                f"The weights folder {path} cannot be created",
                why=f"{e.strerror or type(e).__name__} ({e.filename or target})",
                fix=how + ", or mount the volume read-write",
            ) from e
        probe = target
    if writable and not os.access(probe, os.W_OK | os.X_OK):
        where = "it" if probe == target else f"its parent {probe}"
        raise InputError(
            f"The weights folder {path} is not writable",
            why=f"{where} does not allow this user (uid {os.getuid()}) to write, or the volume is read-only",
            fix=how + ", or mount the volume read-write",
        )

"""Make the model's weights present on local disk: selected, pinned, verified, reused.

This module is the weights step's orchestration and public API. Which files a model needs is
the model step's rule (``model.files``); its parts: ``store`` (the layout on disk, marker, refs, the one ref ->
commit -> folder rule), ``lock`` (one downloader per commit), ``fetch`` (resumable, parallel,
verifying fetch), ``objects`` (object-store copies), ``progress`` (bar or log lines),
``integrity`` (size and hash checks) and ``hub`` (the Hub client).

A warm start reads the completion marker and checks file sizes only: no network, no hashing.
``verify=True`` re-hashes every file of a complete copy and fetches the bad ones again.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sys
import time
from contextlib import ExitStack
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from kaito_runtime import hub
from kaito_runtime.weights.fetch import Fetcher
from kaito_runtime.errors import (
    HubUnreachableError,
    InputError,
    InsufficientDiskError,
    RevisionNotFoundError,
    StopRequested,
    WeightsCorruptError,
    WeightsError,
)
from kaito_runtime.model.files import check_model_folder, has_weights, select_files
from kaito_runtime.hub import (
    COMMIT_RE,
    RemoteFile,
    RemoteModel,
    hub_errors,
    list_files,
    probe_access,
    resolve_endpoint,
    resolve_revision,
)
from kaito_runtime.weights.integrity import bad_files
from kaito_runtime.weights.progress import (
    DEFAULT_PROGRESS_INTERVAL_S,
    ProgressBar,
    ProgressLogger,
    ProgressMode,
    TransferCount,
)
from kaito_runtime.request import offline_in
from kaito_runtime.secrets import Secret
from kaito_runtime.types import format_bytes as fmt_bytes
from kaito_runtime.types import MiB, WeightsSource
from kaito_runtime.weights.lock import download_lock, lock_timeout_s
from kaito_runtime.weights.store import (
    MARKER_NAME,
    check_weights_dir,
    commit_folder,
    known_commit,
    lock_path,
    held_on_disk,
    partial_path,
    read_marker,
    read_ref,
    remove_marker,
    remove_partials,
    repo_folder,
    write_marker,
    write_ref,
)

__all__ = [
    "MARKER_NAME",
    "DEFAULT_DISK_MARGIN",
    "ProgressMode",
    "WeightsResult",
    "check_weights_dir",
    "disk_free_bytes",
    "ensure_store_weights",
    "ensure_weights",
    "local_metadata",
    "os_error_as_weights_error",
    "partial_path",
    "planned_path",
    "repo_folder",
    "select_files",
]

logger = logging.getLogger(__name__)

DEFAULT_DISK_MARGIN = 512 * MiB
WEIGHTS_DIR_HINT = "--weights-dir / KAITO_WEIGHTS_DIR"


@dataclass(frozen=True)
class WeightsResult:
    path: Path  # the folder vLLM loads
    downloaded_bytes: int
    reused: bool  # a complete copy was already there (nothing downloaded)
    seconds: float
    files: int
    revision: str | None = None  # the commit the folder holds (None for a local folder)
    # An object store's model: what vLLM's environment needs to stream it (objstore.child_env),
    # the plain variables and the secret ones (never shown)
    vllm_env: Mapping[str, str] = field(default_factory=dict)
    vllm_secret_env: Mapping[str, str] = field(default_factory=dict, repr=False)


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the volume holding ``path`` (the nearest existing parent). Tests replace this."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _offline(given: bool | None) -> bool:
    """An explicit ``offline`` is trusted as it is (the caller read its own environment, e.g. with
    ``request.offline_in(env)``); None falls back to the process environment."""
    return offline_in(os.environ) if given is None else given


def os_error_as_weights_error(e: OSError, weights_dir: Path) -> WeightsError:
    """One line for a file-system failure in the weights step: the path, the cause, the fix; the
    path at fault is the error's ``path``.

    The only OSError -> WeightsError mapping; callers outside this module use it too."""
    error = _os_error(e, weights_dir)
    error.path = e.filename or weights_dir
    return error


def _os_error(e: OSError, weights_dir: Path) -> WeightsError:
    path = e.filename or weights_dir
    cause = e.strerror or str(e) or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientDiskError(
            f"The disk holding {path} filled up while writing the weights",
            why=cause,
            fix="free space or mount a larger volume at the weights folder; the bytes already received are "
            "kept and the next run resumes from them",
        )
    if e.errno == errno.EROFS:
        return WeightsError(
            f"The weights folder {weights_dir} is on a read-only volume (writing {path})",
            why=cause,
            fix=f"mount it read-write, or pre-fetch the weights into it elsewhere and run with --offline, "
            f"or choose another folder with {WEIGHTS_DIR_HINT}",
        )
    if e.errno in (errno.EACCES, errno.EPERM):
        return WeightsError(
            f"Permission denied writing {path} in the weights folder {weights_dir}",
            why=f"{cause}; this process runs as uid {os.getuid()}",
            fix=f"make {weights_dir} writable for that user (e.g. the pod's fsGroup), or choose another "
            f"folder with {WEIGHTS_DIR_HINT}",
        )
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return WeightsError(
            f"{path} cannot be used as a folder for the weights under {weights_dir}",
            why=f"{cause}: a part of that path is a file",
            fix=f"remove that file, or choose another folder with {WEIGHTS_DIR_HINT}",
        )
    return WeightsError(
        f"Cannot use the weights folder {weights_dir}",
        why=f"{cause} ({path})",
        fix=f"check the volume mounted there, or choose another folder with {WEIGHTS_DIR_HINT}",
    )


def _remember_ref(root: Path, ref: str, commit: str, log: logging.Logger) -> None:
    """Record what a branch resolved to (for --offline); a read-only volume only loses that."""
    try:
        write_ref(root, ref, commit)
    except OSError as e:
        log.warning("weights: cannot record that %s is %s under %s (%s); offline runs will not find it",
                    ref, commit[:12], root, e.strerror or e)


def _use_local_folder(path_text: str, t0: float) -> WeightsResult:
    path = Path(path_text).expanduser()
    names = check_model_folder(path)  # the same rule and words as when the model was resolved
    return WeightsResult(path, 0, True, time.monotonic() - t0, len(names))


@dataclass(frozen=True)
class _Job:
    """One call of ensure_weights: what to fetch, from where, and how."""

    model: WeightsSource
    weights_dir: Path
    token: Secret | None
    token_source: str  # where the token came from, for messages (never the value)
    offline: bool
    endpoint: str  # resolved
    progress: ProgressMode
    disk_margin_bytes: int
    verify: bool
    max_workers: int
    progress_interval_s: float
    lock_timeout_s: float | None
    log: logging.Logger
    started: float  # time.monotonic() at the call
    watch: Callable[[TransferCount, int], None] | None = None

    @property
    def repo_id(self) -> str:
        assert self.model.repo_id
        return self.model.repo_id


def ensure_weights(
    model: WeightsSource,
    *,
    weights_dir: Path,
    token: Secret | None,
    offline: bool | None = None,
    endpoint: str | None = None,
    progress: ProgressMode = "auto",
    disk_margin_bytes: int = DEFAULT_DISK_MARGIN,
    log: logging.Logger | None = None,
    token_source: str | None = None,
    verify: bool = False,
    max_workers: int = 8,
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
    lock_timeout_s: float | None = None,
    watch: Callable[[TransferCount, int], None] | None = None,
) -> WeightsResult:
    """Return a local folder holding ``model``'s weights at its pinned commit; download if needed.

    ``token_source`` names where the token came from (for messages; never the value).
    ``verify=True`` re-hashes every file of a complete copy (sha256 / git blob sha1 from the
    marker) and fetches the bad ones again; without it a complete copy is checked by size only.
    ``lock_timeout_s``: how long to wait for another launcher's download of the same commit to
    make progress (default ``KAITO_WEIGHTS_LOCK_TIMEOUT`` or an hour). ``offline`` given as a
    bool is trusted; None reads ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` from the process
    environment (``request.offline_in``). ``watch(count, total)`` is called when a download
    starts, with the byte count the downloader moves per chunk (the launcher's /metrics reads
    it). Raises the WeightsError family (exit codes 10-18) or InputError;
    file-system failures come as WeightsError naming the path and the fix.
    """
    log = log or logger
    t0 = time.monotonic()
    if model.local_path:
        return _use_local_folder(model.local_path, t0)
    if not model.repo_id:
        raise InputError(f"Model {model.name} has neither a Hugging Face repo id nor a local folder")
    hub.check_repo_id(model.repo_id)  # it names folders on disk, too
    job = _Job(
        model=model,
        weights_dir=Path(weights_dir),
        token=token,
        token_source=token_source or ("the given token" if token else "none"),
        offline=_offline(offline),
        endpoint=resolve_endpoint(endpoint),
        progress=progress,
        disk_margin_bytes=disk_margin_bytes,
        verify=verify,
        max_workers=max_workers,
        progress_interval_s=progress_interval_s,
        lock_timeout_s=lock_timeout_s,
        log=log,
        started=t0,
        watch=watch,
    )
    try:
        return _ensure_repo(job)
    except OSError as e:
        raise os_error_as_weights_error(e, Path(weights_dir)) from None


def _ensure_repo(job: _Job) -> WeightsResult:
    repo_id, log, t0, verify, offline = job.repo_id, job.log, job.started, job.verify, job.offline
    token, source, ep = job.token, job.token_source, job.endpoint
    root = repo_folder(job.weights_dir, repo_id)
    ref = job.model.revision or "main"
    wait_s = lock_timeout_s(job.lock_timeout_s)  # validated before anything is fetched

    # A commit is its own; offline a branch is what it last resolved to here; online the hub says.
    commit = known_commit(root, ref) if offline or COMMIT_RE.match(ref) else None
    if commit is None and not offline:
        commit = _resolve_online(repo_id, ref, root, token, source, ep, log)
    if commit is None:
        raise HubUnreachableError(
            f"Offline mode, and {repo_id}@{ref} was never resolved to a commit under {root}",
            why="without the network a branch cannot be resolved",
            fix="run once online (or pass a 40-hex revision) to pre-fetch the weights, then use --offline",
        )
    folder = root / commit

    if offline:
        reused, _ = _check_copy(folder, repo_id, commit, verify, log, t0, repair=False)
        if reused is not None:
            return reused
        raise HubUnreachableError(
            f"Offline mode, and no complete copy of {repo_id}@{commit[:12]} is in {folder}",
            why=f"The completion marker {MARKER_NAME} is missing or files are missing/short",
            fix="pre-fetch the weights online into the same weights folder, or drop --offline",
        )
    if not verify:
        reused = _reuse_by_size(folder, repo_id, commit, log, t0)
        if reused is not None:
            return reused

    root.mkdir(parents=True, exist_ok=True)
    try:
        with download_lock(root, commit, folder, what=f"{repo_id}@{commit[:12]}", timeout_s=wait_s, log=log):
            reused, checked = _check_copy(folder, repo_id, commit, verify, log, t0, repair=True)
            if reused is not None:
                return reused
            # After a repair the files left in place were just hashed: no need to hash them again.
            return _download(job, folder, commit, verify=verify and not checked)
    except RevisionNotFoundError:
        # A commit given by hand that the hub does not have: nothing can ever be downloaded under
        # its lock (any other launcher asking for it fails the same way), so leave no lock file.
        if not folder.exists():
            lock_path(root, commit).unlink(missing_ok=True)
        raise


def _resolve_online(
    repo_id: str, ref: str, root: Path, token: Secret | None, source: str, ep: str, log: logging.Logger
) -> str:
    try:
        with hub_errors(repo_id=repo_id, revision=ref, token_source=source, endpoint=ep):
            commit, _ = resolve_revision(repo_id, ref, token=token, endpoint=ep)
    except HubUnreachableError:
        cached = read_ref(root, ref)
        if cached and read_marker(root / cached, repo_id, cached) is not None:
            log.warning("weights: hub unreachable; using the copy of %s@%s resolved earlier (%s)", repo_id, ref, cached[:12])
            return cached
        raise
    log.info("weights: %s@%s is commit %s", repo_id, ref, commit)
    _remember_ref(root, ref, commit, log)
    return commit


def _reused(folder: Path, repo_id: str, commit: str, files: list[RemoteFile], log: logging.Logger, t0: float) -> WeightsResult:
    log.info("weights: reusing complete copy of %s@%s in %s (%d files)", repo_id, commit[:12], folder, len(files))
    return WeightsResult(folder, 0, True, time.monotonic() - t0, len(files), commit)


def _reuse_by_size(folder: Path, repo_id: str, commit: str, log: logging.Logger, t0: float) -> WeightsResult | None:
    files = read_marker(folder, repo_id, commit)
    return None if files is None else _reused(folder, repo_id, commit, files, log, t0)


def _check_copy(
    folder: Path, repo_id: str, commit: str, verify: bool, log: logging.Logger, t0: float, *, repair: bool
) -> tuple[WeightsResult | None, bool]:
    """(result when the copy is complete and good, whether its files were hashed).

    With ``verify``, every file is re-hashed; with ``repair`` the bad ones and the marker are
    removed (the caller holds the lock and fetches them again), else a bad copy is an error.
    """
    files = read_marker(folder, repo_id, commit)
    if files is None:
        return None, False
    if not verify:
        return _reused(folder, repo_id, commit, files, log, t0), False
    log.info("weights: verifying %d files (%s) of %s", len(files), fmt_bytes(sum(f.size for f in files)), folder)
    bad = bad_files(folder, files)
    if not bad:
        return _reused(folder, repo_id, commit, files, log, t0), True
    names = ", ".join(f.path for f in bad)
    if not repair:
        raise WeightsCorruptError(
            f"{len(bad)} file(s) of the copy of {repo_id}@{commit[:12]} in {folder} fail verification: {names}",
            why="their bytes do not match the sha256 / git blob sha1 recorded when they were downloaded",
            fix="run once online (without --offline) to fetch them again",
        )
    log.warning("weights: %d file(s) of %s fail verification (%s); fetching them again", len(bad), folder, names)
    remove_marker(folder)
    for f in bad:
        (folder / f.path).unlink(missing_ok=True)
    return None, True


def _download(job: _Job, folder: Path, commit: str, *, verify: bool) -> WeightsResult:
    model, repo_id, log, t0 = job.model, job.repo_id, job.log, job.started
    token, source, ep, margin = job.token, job.token_source, job.endpoint, job.disk_margin_bytes

    def errors() -> Any:
        return hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep)

    with errors():
        remote = list_files(repo_id, commit, token=token, endpoint=ep)
        by_path = {f.path: f for f in remote}
        files = [by_path[p] for p in select_files(by_path, model.load_format)]
        if not has_weights(f.path for f in files):
            raise WeightsError(
                f"{repo_id}@{commit[:12]} has no weight files vLLM can load (load format {model.load_format})",
                why=f"files at the top level: {', '.join(sorted(p for p in by_path if '/' not in p)[:12])}",
                fix="check the repo id / revision, or the preset's load_format",
            )
        probe = "config.json" if "config.json" in {f.path for f in files} else min(files, key=lambda f: f.size).path
        probe_access(repo_id, commit, probe, token=token, endpoint=ep)

    total = sum(f.size for f in files)
    held = held_on_disk(folder, files)
    on_disk = sum(held.values())
    needed = total - on_disk
    free = disk_free_bytes(folder)
    if needed + margin > free:
        raise InsufficientDiskError(
            f"Not enough disk for the weights of {repo_id} in {folder.parent.parent}",
            why=f"needs {fmt_bytes(needed)} more (+{fmt_bytes(margin)} margin), {fmt_bytes(free)} free",
            fix="free space or mount a larger volume at the weights folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    log.info(
        "weights: fetching %d files (%s, %s already on disk) of %s@%s from %s into %s",
        len(files), fmt_bytes(total), fmt_bytes(on_disk), repo_id, commit[:12], hub.shown_endpoint(ep), folder,
    )
    mode = job.progress if job.progress != "auto" else ("bar" if sys.stderr.isatty() else "log")
    try:
        with ExitStack() as shown:
            bar = shown.enter_context(ProgressBar(total, on_disk)) if mode == "bar" else None
            count = TransferCount(held, on_change=bar.add if bar else None)
            if job.watch is not None:
                job.watch(count, total)
            fetcher = Fetcher(repo_id, commit, folder, token, ep, log, count, verify=verify)
            if mode == "log":
                shown.enter_context(ProgressLogger(count, total, log, job.progress_interval_s))
            with errors():
                bad = fetcher.run(files, job.max_workers)
    except StopRequested as stop:
        partial = sum(held_on_disk(folder, files).values()) + sum(
            p.stat().st_size for p in folder.rglob("*.part") if p.is_file()
        )
        stop.kept = (f"the weights step stopped; {fmt_bytes(partial)} of {fmt_bytes(total)} kept in {folder} "
                     "for the next run to resume; the download lock is released")
        raise
    if bad:
        raise WeightsCorruptError(
            f"{', '.join(f.path for f in bad)} of {repo_id}@{commit[:12]} failed verification twice",
            why="The bytes received do not match the size/sha256 the Hub lists",
            fix="retry later; if it persists, check proxies or caches between this node and the Hub",
        )
    remove_partials(folder)
    write_marker(folder, repo_id, commit, model.load_format, files)
    seconds = time.monotonic() - t0
    log.info("weights: %s@%s complete in %s (%.1fs)", repo_id, commit[:12], folder, seconds)
    return WeightsResult(folder, needed, False, seconds, len(files), commit)


# --- object stores (s3://, gs://, az://) ----------------------------------------------------------


def ensure_store_weights(
    model: WeightsSource,
    *,
    weights_dir: Path,
    env: Mapping[str, str],
    copy: bool = False,
    lock_timeout_s: float = 3600.0,
    log: logging.Logger | None = None,
) -> WeightsResult:
    """A model in an object store. Serving (``copy`` False): vLLM streams the tensors; this puts
    the non-tensor files where vLLM looks for them on this node and returns that folder, with the
    objects' version digest as ``revision``. ``copy`` (--download-only): a complete, verified
    local copy (``weights.objects``)."""
    from kaito_runtime import objstore
    from kaito_runtime.weights import objects

    log = log or logger
    assert model.store_uri
    t0 = time.monotonic()
    try:
        if copy:
            folder, version, received, files, reused = objects.download_copy(
                model.store_uri, env, Path(weights_dir), log, lock_timeout_s=lock_timeout_s
            )
            return WeightsResult(folder, received, reused, time.monotonic() - t0, files, version)
        folder, version, fetched = objects.fetch_assets(model.store_uri, env, Path(weights_dir), log)
    except OSError as e:
        raise os_error_as_weights_error(e, Path(weights_dir)) from None
    if model.store_version and version != model.store_version:
        log.warning("weights: the objects under %s changed since the plan was made (version %s, now %s)",
                    model.store_uri, model.store_version, version)
    plain, secret = objstore.child_env(model.store_uri, env, folder)
    return WeightsResult(folder, fetched, False, time.monotonic() - t0, len(list(folder.iterdir())), version,
                         vllm_env=plain, vllm_secret_env=secret)


def obtain(source: WeightsSource, asked, credentials, env: Mapping[str, str], *,
           ensure: Callable[..., WeightsResult] | None = None, copy: bool = False,
           watch: Callable[[object, int], None] | None = None, log: logging.Logger | None = None) -> WeightsResult:
    """The weights step as a launch takes it: ``asked`` is the settled request's weights slice
    (folder, offline, endpoint, verify, lock timeout), ``credentials`` its resolved token,
    ``ensure`` the hub's fetcher (``ensure_weights``; the API's seam replaces it). An object
    store's model: its non-tensor files (vLLM streams the tensors), or with ``copy`` all of it.
    An operating-system error on the way (permissions, a full or read-only volume) becomes a
    WeightsError (exit 10) naming the path, not a traceback. ``watch(count, total)``: told when a
    download starts (the launcher's /metrics reads the count)."""
    from kaito_runtime import objstore
    from kaito_runtime.hub import timeouts

    if source.store_uri:
        return ensure_store_weights(source, weights_dir=asked.weights_dir, env=env, copy=copy,
                                    lock_timeout_s=asked.lock_timeout_s, log=log)
    try:
        with timeouts.timeout_from(env):
            return (ensure or ensure_weights)(
                source, weights_dir=asked.weights_dir, token=credentials.token, token_source=credentials.source,
                offline=asked.offline, endpoint=asked.endpoint, verify=asked.verify, lock_timeout_s=asked.lock_timeout_s,
                watch=watch,
            )
    except OSError as e:
        raise os_error_as_weights_error(e, asked.weights_dir) from e


# --- for planning (before the download) -------------------------------------------------------


def planned_path(model: WeightsSource, weights_dir: Path, env: Mapping[str, str] | None = None) -> Path | str:
    """Where vLLM will load the model from, known before any download (for vLLM's argv): the
    folder ensure_weights will return, or (a str) the URI vLLM streams an object store's model from.

    Exact for a local folder, a store and a 40-hex revision; a branch uses the commit it last
    resolved to on this volume, else the branch name (ensure_weights then returns the real folder).
    """
    if model.local_path:
        return Path(model.local_path)
    if model.repo_id:
        return commit_folder(weights_dir, model.repo_id, model.revision)[0]
    if not model.store_uri:
        raise InputError(f"Model {model.name} has neither a Hugging Face repo id, an object-store URI nor a local folder")
    from kaito_runtime import objstore

    return objstore.vllm_model_uri(model.store_uri, env or {})


class LocalCopies:
    """The complete copies under one weights folder, as the steps before the plan may read them
    (``model.sources.LocalCopies``): metadata for an offline plan, whether a copy is whole."""

    def __init__(self, weights_dir: Path) -> None:
        self.weights_dir = Path(weights_dir)

    def metadata(self, repo_id: str, revision: str | None) -> RemoteModel | None:
        """What a complete copy says about ``repo_id@revision`` (None when there is none): the
        metadata an offline run, or a run whose hub is unreachable, plans from."""
        folder, commit = commit_folder(self.weights_dir, repo_id, revision)
        if commit is None:
            return None
        files = read_marker(folder, repo_id, commit)
        if files is None:
            return None

        def load(name: str) -> dict | None:
            try:
                data = json.loads((folder / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None

        return RemoteModel(repo_id, commit, tuple(files), gated=False, config=load("config.json"), params=load("params.json"))

    def is_complete(self, model: WeightsSource) -> bool:
        """A complete copy of ``model`` at its pinned commit is here (nothing to fetch)."""
        if model.local_path or not (model.repo_id and model.revision):
            return bool(model.local_path)
        folder, commit = commit_folder(self.weights_dir, model.repo_id, model.revision)
        return commit is not None and read_marker(folder, model.repo_id, commit) is not None


def local_metadata(repo_id: str, revision: str | None, weights_dir: Path) -> RemoteModel | None:
    """``LocalCopies(weights_dir).metadata(repo_id, revision)``."""
    return LocalCopies(weights_dir).metadata(repo_id, revision)

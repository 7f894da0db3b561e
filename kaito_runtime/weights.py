"""Make the model's weights present on local disk: selected, pinned, verified, reused.

Layout (one folder per repo and commit, real files, no symlinks, directly loadable by vLLM)::

    <weights_dir>/<org>--<name>/<commit>/            the files vLLM loads (``WeightsResult.path``)
    <weights_dir>/<org>--<name>/<commit>/.kaito-complete.json   written last: the copy is whole
    <weights_dir>/<org>--<name>/<commit>/.cache/kaito/partial/  files being downloaded (resumable)
    <weights_dir>/<org>--<name>/refs/<branch>        commit a branch resolved to (for --offline)
    <weights_dir>/<org>--<name>/.<commit>.lock       one downloader per repo+commit on the volume

``local_dir`` rather than the HF cache because the folder *is* what vLLM loads (no symlink farm,
which some shared volumes cannot hold), a commit is its own folder (pinning is visible on disk),
and the completion marker sits next to the files it vouches for.

A warm start reads the marker and checks file sizes only: no network, no hashing.

Each file streams into a partial file named after its path and expected hash, through the
client's ``http_get``. The partial outlives the process (unlike the client's own per-process
temp files), so a run after a kill or crash asks only for the missing bytes (HTTP Range). A file
reaches its real path only after its size and hash (sha256 of LFS files, git blob sha1 of the
others) match, by an atomic rename; nothing half-written ever sits where vLLM looks.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from kaito_runtime.errors import (
    HubUnreachableError,
    InputError,
    InsufficientDiskError,
    WeightsCorruptError,
    WeightsError,
)
from kaito_runtime import hub
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
from kaito_runtime.secrets import Secret
from kaito_runtime.values import GiB, MiB, ModelSpec

logger = logging.getLogger(__name__)

MARKER_NAME = ".kaito-complete.json"
PARTIAL_DIR = Path(".cache") / "kaito" / "partial"
MARKER_FORMAT = 1
DEFAULT_DISK_MARGIN = 512 * MiB
DEFAULT_PROGRESS_INTERVAL_S = 5.0
ProgressMode = Literal["auto", "bar", "log", "none"]


@dataclass(frozen=True)
class WeightsResult:
    path: Path  # the folder vLLM loads
    downloaded_bytes: int
    reused: bool  # a complete copy was already there (nothing downloaded)
    seconds: float
    files: int
    revision: str | None = None  # the commit the folder holds (None for a local folder)


# --- which files ------------------------------------------------------------------------------

# Small top-level files a server needs besides the weights.
_SUPPORT_PATTERNS = (
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "*.tiktoken",
    "*.jinja",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "*.py",  # remote code, for models that need trust_remote_code
)
_MISTRAL_SUPPORT = ("params.json", "tekken.json")


def _top_level(path: str) -> bool:
    return "/" not in path


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_files(paths: Iterable[str], load_format: str = "hf") -> list[str]:
    """The repo files to fetch for a load format (pure).

    Weights come from the top level only (``original/``, ``metal/`` … hold other copies).
    ``hf``: the HF-format ``*.safetensors`` shards and their index, never ``consolidated*``; ``*.bin``
    only when no safetensors exist. ``mistral``: ``consolidated*.safetensors``, ``params.json``,
    ``tekken.json`` and no HF shards (HF shards when the repo has no consolidated file).
    """
    top = sorted(p for p in set(paths) if _top_level(p))
    support = [p for p in top if _matches(p, _SUPPORT_PATTERNS)]
    st = [p for p in top if p.endswith((".safetensors", ".safetensors.index.json"))]
    consolidated = [p for p in st if p.startswith("consolidated")]
    hf_shards = [p for p in st if not p.startswith("consolidated")]
    if load_format == "mistral" and any(p.endswith(".safetensors") for p in consolidated):
        weights = consolidated
    elif any(p.endswith(".safetensors") for p in hf_shards):
        weights = hf_shards
    else:
        weights = [p for p in top if p.endswith(".bin") or p.endswith(".bin.index.json")]
    if load_format == "mistral":
        support += [p for p in top if p in _MISTRAL_SUPPORT]
    return sorted(set(support) | set(weights))


def _has_weights(names: Iterable[str]) -> bool:
    return any(n.endswith((".safetensors", ".bin", ".pt", ".pth")) for n in names)


# --- disk -------------------------------------------------------------------------------------


def disk_free_bytes(path: Path) -> int:
    """Free bytes on the volume holding ``path`` (the nearest existing parent). Tests replace this."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _fmt_bytes(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{int(n)} B"


# --- marker -----------------------------------------------------------------------------------


def repo_folder(weights_dir: Path, repo_id: str) -> Path:
    return Path(weights_dir) / repo_id.replace("/", "--")


def _marker_files(folder: Path, repo_id: str, commit: str) -> list[dict[str, Any]] | None:
    """The marker's file list when the marker is valid and every file has its size, else None."""
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("format") != MARKER_FORMAT or data.get("repo_id") != repo_id or data.get("revision") != commit:
        return None
    files = data.get("files") or []
    for f in files:
        try:
            if (folder / f["path"]).stat().st_size != f["size"]:
                return None
        except (OSError, KeyError, TypeError):
            return None
    return files or None


def _write_marker(folder: Path, repo_id: str, commit: str, load_format: str, files: Sequence[RemoteFile]) -> None:
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


def _ref_path(root: Path, ref: str) -> Path:
    return root / "refs" / ref.replace("/", "%2F")


def _read_ref(root: Path, ref: str) -> str | None:
    try:
        value = _ref_path(root, ref).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return value if COMMIT_RE.match(value) else None


def _write_ref(root: Path, ref: str, commit: str) -> None:
    path = _ref_path(root, ref)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(commit + "\n", encoding="utf-8")
    os.replace(tmp, path)


# --- verification -----------------------------------------------------------------------------


def _new_hasher(f: RemoteFile) -> Any | None:
    """A hash object whose digest must equal ``_expected_digest(f)``, or None (nothing to check)."""
    if f.sha256:
        return hashlib.sha256()
    if f.blob_id:
        return hashlib.sha1(f"blob {f.size}\0".encode())
    return None


def _expected_digest(f: RemoteFile) -> str | None:
    return f.sha256 or f.blob_id


def _hash_file(path: Path, h: Any, limit: int | None = None) -> str:
    left = limit
    with path.open("rb") as fh:
        while chunk := fh.read(4 * MiB if left is None else min(4 * MiB, left)):
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def _file_ok(folder: Path, f: RemoteFile) -> bool:
    path = folder / f.path
    if not _size_is(path, f.size):
        return False
    h = _new_hasher(f)
    return h is None or _hash_file(path, h) == _expected_digest(f)


def _bad_files(folder: Path, files: Sequence[RemoteFile]) -> list[RemoteFile]:
    workers = max(1, min(4, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL on large buffers
        oks = list(pool.map(lambda f: _file_ok(folder, f), files))
    return [f for f, ok in zip(files, oks) if not ok]


def _size_is(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except OSError:
        return False


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# --- partial files ----------------------------------------------------------------------------


def partial_path(folder: Path, f: RemoteFile) -> Path:
    """Where ``f`` is downloaded before it is verified; the expected hash is in the name, so bytes
    of another version of the file are never appended to."""
    tag = (_expected_digest(f) or "unhashed")[:16]
    return folder / PARTIAL_DIR / f"{f.path}.{tag}.part"


class _Cancelled(Exception):
    """Another file failed: stop this one (its partial stays, for the next run to resume)."""


class _HashingAppender:
    """The open partial file as ``http_get`` sees it: every appended chunk is hashed on its way
    to disk, so a finished file is verified without reading it back."""

    def __init__(self, fh: Any, hasher: Any | None, stop: threading.Event, fresh: Callable[[], Any | None],
                 on_bytes: Callable[[int], None] | None) -> None:
        self._fh, self.hasher, self._stop, self._fresh, self._on_bytes = fh, hasher, stop, fresh, on_bytes

    def write(self, data: bytes) -> int:
        if self._stop.is_set():
            raise _Cancelled()
        n = self._fh.write(data)
        if self.hasher is not None:
            self.hasher.update(data)
        if self._on_bytes:
            self._on_bytes(n)
        return n

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def truncate(self, size: int | None = None) -> int:
        # http_get truncates when the server ignored our Range and sent the whole file again.
        size = self._fh.tell() if size is None else size
        self._fh.flush()
        before = os.fstat(self._fh.fileno()).st_size
        self._fh.truncate(size)
        self.hasher = self._fresh() if size == 0 else None  # None: hash the file from disk afterwards
        if self._on_bytes:
            self._on_bytes(size - before)
        return size

    def flush(self) -> None:
        self._fh.flush()


# --- progress ---------------------------------------------------------------------------------


def _silent_tqdm() -> type:
    from huggingface_hub.utils import tqdm as hf_tqdm

    class SilentTqdm(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _bytes_on_disk(folder: Path, files: Sequence[RemoteFile]) -> int:
    """Finished files plus the partial files being written (what a resume does not fetch again)."""
    done = 0
    for f in files:
        final = _size_of(folder / f.path)
        done += final if final == f.size else min(_size_of(partial_path(folder, f)), f.size)
    return done


class _ProgressLogger:
    """Logs bytes on disk (finished + partial files) every ``interval`` seconds."""

    def __init__(self, folder: Path, files: Sequence[RemoteFile], baseline: int, log: logging.Logger, interval: float):
        self.folder, self.files, self.baseline, self.log, self.interval = folder, files, baseline, log, interval
        self.total = sum(f.size for f in files)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="weights-progress", daemon=True)
        self._t0 = time.monotonic()

    def _line(self) -> None:
        done = _bytes_on_disk(self.folder, self.files)
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        rate = max(done - self.baseline, 0) / elapsed
        pct = 100.0 * done / self.total if self.total else 100.0
        eta = f"{(self.total - done) / rate:.0f}s" if rate > 0 else "?"
        self.log.info(
            "weights: %s / %s (%.0f%%), %s/s, ETA %s",
            _fmt_bytes(done), _fmt_bytes(self.total), pct, _fmt_bytes(rate), eta,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._line()

    def __enter__(self) -> _ProgressLogger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class _ProgressBar:
    """One bar for the whole model (TTY), fed by the appenders."""

    def __init__(self, total: int, initial: int) -> None:
        from huggingface_hub.utils import tqdm as hf_tqdm

        self._bar = hf_tqdm(total=total, initial=initial, unit="B", unit_scale=True, desc="weights")
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


# --- the step ---------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _use_local_folder(path_text: str, t0: float) -> WeightsResult:
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise InputError(f"Model folder {path} does not exist or is not a folder", fix="pass a folder holding config.json and the weight files")
    names = [p.name for p in path.iterdir() if p.is_file()]
    if not ({"config.json", "params.json"} & set(names)):
        raise InputError(f"Model folder {path} has no config.json (nor params.json)", fix="point --model at the folder that holds the model's config.json")
    if not _has_weights(names):
        raise InputError(
            f"Model folder {path} holds no weight files",
            why="no *.safetensors / *.bin / *.pt at its top level",
            fix="finish copying the weights into it, or point --model at the right folder",
        )
    return WeightsResult(path, 0, True, time.monotonic() - t0, len(names))


def ensure_weights(
    model: ModelSpec,
    *,
    weights_dir: Path,
    token: Secret | None,
    offline: bool = False,
    endpoint: str | None = None,
    progress: ProgressMode = "auto",
    disk_margin_bytes: int = DEFAULT_DISK_MARGIN,
    log: logging.Logger | None = None,
    token_source: str | None = None,
    verify: bool = False,
    max_workers: int = 8,
    progress_interval_s: float = DEFAULT_PROGRESS_INTERVAL_S,
    lock_timeout_s: float | None = None,
) -> WeightsResult:
    """Return a local folder holding ``model``'s weights at its pinned commit; download if needed.

    ``token_source`` names where the token came from (for messages; never the value).
    ``verify=True`` re-hashes a complete copy before reusing it. ``HF_HUB_OFFLINE=1`` implies
    ``offline``. Raises the WeightsError family (exit codes 10-18) or InputError.
    """
    log = log or logger
    t0 = time.monotonic()
    if model.local_path:
        return _use_local_folder(model.local_path, t0)
    if not model.repo_id:
        raise InputError(f"Model {model.name} has neither a Hugging Face repo id nor a local folder")

    repo_id = model.repo_id
    offline = offline or _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")
    ep = resolve_endpoint(endpoint)
    source = token_source or ("the given token" if token else "none")
    root = repo_folder(weights_dir, repo_id)
    ref = model.revision or "main"

    commit = ref if COMMIT_RE.match(ref) else None
    if commit is None:
        commit = _read_ref(root, ref) if offline else _resolve_online(repo_id, ref, root, token, source, ep, log)
        if commit is None:
            raise HubUnreachableError(
                f"Offline mode, and {repo_id}@{ref} was never resolved to a commit under {root}",
                why="without the network a branch cannot be resolved",
                fix="run once online (or pass a 40-hex revision) to pre-fetch the weights, then use --offline",
            )
    folder = root / commit

    reused = _reuse(folder, repo_id, commit, verify, log, t0)
    if reused is not None:
        return reused
    if offline:
        raise HubUnreachableError(
            f"Offline mode, and no complete copy of {repo_id}@{commit[:12]} is in {folder}",
            why=f"The completion marker {MARKER_NAME} is missing or files are missing/short",
            fix="pre-fetch the weights online into the same weights folder, or drop --offline",
        )

    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{commit}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("weights: another launcher is downloading %s@%s into %s; waiting for it", repo_id, commit[:12], folder)
        try:
            lock.acquire(timeout=-1 if lock_timeout_s is None else lock_timeout_s)
        except Timeout:
            raise WeightsError(
                f"Timed out after {lock_timeout_s:.0f}s waiting for another download of {repo_id}",
                why=f"The lock {lock.lock_file} stayed held",
                fix="check the other launcher sharing the weights volume, or remove the stale lock",
            ) from None
    try:
        reused = _reuse(folder, repo_id, commit, False, log, t0)
        if reused is not None:
            return reused
        return _download(
            model, folder, commit, token, source, ep, progress, disk_margin_bytes, log, max_workers,
            progress_interval_s, t0,
        )
    finally:
        lock.release()


def _resolve_online(
    repo_id: str, ref: str, root: Path, token: Secret | None, source: str, ep: str, log: logging.Logger
) -> str:
    try:
        with hub_errors(repo_id=repo_id, revision=ref, token_source=source, endpoint=ep):
            commit, _ = resolve_revision(repo_id, ref, token=token, endpoint=ep)
    except HubUnreachableError:
        cached = _read_ref(root, ref)
        if cached and _marker_files(root / cached, repo_id, cached) is not None:
            log.warning("weights: hub unreachable; using the copy of %s@%s resolved earlier (%s)", repo_id, ref, cached[:12])
            return cached
        raise
    log.info("weights: %s@%s is commit %s", repo_id, ref, commit)
    _write_ref(root, ref, commit)
    return commit


def _reuse(folder: Path, repo_id: str, commit: str, verify: bool, log: logging.Logger, t0: float) -> WeightsResult | None:
    files = _marker_files(folder, repo_id, commit)
    if files is None:
        return None
    if verify:
        remote = [RemoteFile(f["path"], f["size"], f.get("blob_id"), f.get("sha256")) for f in files]
        bad = _bad_files(folder, remote)
        if bad:
            log.warning("weights: %d file(s) of %s fail verification (%s); fetching again", len(bad), folder, ", ".join(f.path for f in bad))
            (folder / MARKER_NAME).unlink(missing_ok=True)
            for f in bad:
                (folder / f.path).unlink(missing_ok=True)
            return None
    log.info("weights: reusing complete copy of %s@%s in %s (%d files)", repo_id, commit[:12], folder, len(files))
    return WeightsResult(folder, 0, True, time.monotonic() - t0, len(files), commit)


def _download(
    model: ModelSpec,
    folder: Path,
    commit: str,
    token: Secret | None,
    source: str,
    ep: str,
    progress: ProgressMode,
    margin: int,
    log: logging.Logger,
    max_workers: int,
    interval: float,
    t0: float,
) -> WeightsResult:
    repo_id = model.repo_id
    assert repo_id
    def errors() -> Any:
        return hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep)

    with errors():
        remote = list_files(repo_id, commit, token=token, endpoint=ep)
        by_path = {f.path: f for f in remote}
        files = [by_path[p] for p in select_files(by_path, model.load_format)]
        if not _has_weights(f.path for f in files):
            raise WeightsError(
                f"{repo_id}@{commit[:12]} has no weight files vLLM can load (load format {model.load_format})",
                why=f"files at the top level: {', '.join(sorted(p for p in by_path if '/' not in p)[:12])}",
                fix="check the repo id / revision, or the preset's load_format",
            )
        probe = "config.json" if "config.json" in {f.path for f in files} else min(files, key=lambda f: f.size).path
        probe_access(repo_id, commit, probe, token=token, endpoint=ep)

    total = sum(f.size for f in files)
    on_disk = _bytes_on_disk(folder, files)
    needed = total - on_disk
    free = disk_free_bytes(folder)
    if needed + margin > free:
        raise InsufficientDiskError(
            f"Not enough disk for the weights of {repo_id} in {folder.parent.parent}",
            why=f"needs {_fmt_bytes(needed)} more (+{_fmt_bytes(margin)} margin), {_fmt_bytes(free)} free",
            fix="free space or mount a larger volume at the weights folder",
        )
    folder.mkdir(parents=True, exist_ok=True)
    log.info(
        "weights: fetching %d files (%s, %s already on disk) of %s@%s from %s into %s",
        len(files), _fmt_bytes(total), _fmt_bytes(on_disk), repo_id, commit[:12], ep, folder,
    )
    mode = progress if progress != "auto" else ("bar" if sys.stderr.isatty() else "log")
    reporter = _ProgressLogger(folder, files, on_disk, log, interval) if mode == "log" else None
    bar = _ProgressBar(total, on_disk) if mode == "bar" else None
    fetcher = _Fetcher(repo_id, commit, folder, token, ep, log, bar.add if bar else None)

    if reporter:
        reporter.__enter__()
    try:
        with errors():
            bad = fetcher.run(files, max_workers)
    finally:
        if reporter:
            reporter.__exit__(None, None, None)
        if bar:
            bar.close()
    if bad:
        raise WeightsCorruptError(
            f"{', '.join(f.path for f in bad)} of {repo_id}@{commit[:12]} failed verification twice",
            why="The bytes received do not match the size/sha256 the Hub lists",
            fix="retry later; if it persists, check proxies or caches between this node and the Hub",
        )
    shutil.rmtree(folder / PARTIAL_DIR, ignore_errors=True)  # leftovers of files no longer selected
    _write_marker(folder, repo_id, commit, model.load_format, files)
    seconds = time.monotonic() - t0
    log.info("weights: %s@%s complete in %s (%.1fs)", repo_id, commit[:12], folder, seconds)
    return WeightsResult(folder, needed, False, seconds, len(files), commit)


class _Fetcher:
    """Brings each file to its real path, verified: resumes its partial file, checks size and hash,
    renames it into place; a mismatch discards the partial and fetches the file once more."""

    def __init__(self, repo_id: str, commit: str, folder: Path, token: Secret | None, endpoint: str,
                 log: logging.Logger, on_bytes: Callable[[int], None] | None) -> None:
        self.repo_id, self.commit, self.folder, self.token, self.endpoint = repo_id, commit, folder, token, endpoint
        self.log, self.on_bytes = log, on_bytes
        self.stop = threading.Event()
        self.tqdm_class = _silent_tqdm()
        self.http_limit = hub.http_download_limit()

    def run(self, files: Sequence[RemoteFile], max_workers: int) -> list[RemoteFile]:
        """The files that failed verification twice; raises the first other failure."""
        order = sorted(files, key=lambda f: -f.size)  # big ones first: they bound the wall time
        with ThreadPoolExecutor(max(1, min(max_workers, len(order))), thread_name_prefix="weights") as pool:
            futures = {pool.submit(self.fetch, f): f for f in order}
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for fut in done:
                    if fut.exception() is not None:
                        fut.result()
            except BaseException:
                self.stop.set()  # running downloads stop at their next chunk; partials stay
                for fut in futures:
                    fut.cancel()
                raise
        return [f for fut, f in futures.items() if not fut.result()]

    def fetch(self, f: RemoteFile) -> bool:
        final = self.folder / f.path
        if _size_is(final, f.size):
            # Renamed into place, verified, by a run killed before its marker. No fsync before the
            # rename: after a node crash ext4/xfs show unflushed files short, never padded.
            return True
        final.unlink(missing_ok=True)
        for attempt in (1, 2):
            if self.stop.is_set():
                raise _Cancelled()
            ok = self._whole(f) if f.size > self.http_limit else self._resumed(f)
            if ok:
                return True
            self.log.warning(
                "weights: %s failed verification (%s); %s", f.path, "size or hash mismatch",
                "fetching it again" if attempt == 1 else "giving up",
            )
        return False

    def _resumed(self, f: RemoteFile) -> bool:
        part = partial_path(self.folder, f)
        have = _size_of(part)
        if have > f.size:
            self.log.warning("weights: partial %s is larger than %s; discarding it", part, f.path)
            self._discard(part)
            have = 0
        elif have:
            self.log.info("weights: resuming %s at %s of %s", f.path, _fmt_bytes(have), _fmt_bytes(f.size))
        hasher = _new_hasher(f)
        if hasher is not None and have:
            _hash_file(part, hasher, limit=have)
        part.parent.mkdir(parents=True, exist_ok=True)
        size_ok = True
        with part.open("ab") as fh:
            out = _HashingAppender(fh, hasher, self.stop, lambda: _new_hasher(f), self.on_bytes)
            try:
                hub.download_range(
                    self.repo_id, self.commit, f.path, out,  # type: ignore[arg-type]
                    resume_size=have, expected_size=f.size, token=self.token, endpoint=self.endpoint,
                    tqdm_class=self.tqdm_class,
                )
            except OSError as e:
                if e.errno is not None or getattr(e, "response", None) is not None:
                    raise  # a disk error, or an HTTP error for hub_errors to translate
                size_ok = False  # the client's size consistency check
        ok = size_ok and _size_is(part, f.size)
        expected = _expected_digest(f)
        if ok and expected is not None:
            digest = out.hasher.hexdigest() if out.hasher is not None else _hash_file(part, _new_hasher(f))
            ok = digest == expected
        if not ok:
            self._discard(part)
            return False
        final = self.folder / f.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        return True

    def _whole(self, f: RemoteFile) -> bool:
        # Over the client's plain-HTTP limit the Hub serves the file through Xet only, which the
        # client does not resume across processes; hf_hub_download picks Xet when it can.
        try:
            hub.download_whole(
                self.repo_id, self.commit, f.path, self.folder, token=self.token, endpoint=self.endpoint,
                tqdm_class=self.tqdm_class,
            )
        except ValueError as e:
            raise WeightsError(
                f"{f.path} of {self.repo_id} ({_fmt_bytes(f.size)}) is too large for a plain HTTP download",
                why=str(e).strip().splitlines()[0],
                fix="install the hf_xet package (pip install hf_xet) and leave HF_HUB_DISABLE_XET unset",
            ) from None
        if _file_ok(self.folder, f):
            return True
        (self.folder / f.path).unlink(missing_ok=True)
        return False

    def _discard(self, part: Path) -> None:
        size = _size_of(part)
        part.unlink(missing_ok=True)
        if self.on_bytes and size:
            self.on_bytes(-size)


# --- for planning (before the download) -------------------------------------------------------


def planned_path(model: ModelSpec, weights_dir: Path) -> Path:
    """The folder ensure_weights will return, known before any download (for vLLM's argv).

    Exact for a local folder and a 40-hex revision; a branch uses the commit it last resolved
    to on this volume, else the branch name (ensure_weights then returns the real folder).
    """
    if model.local_path:
        return Path(model.local_path)
    if not model.repo_id:
        raise InputError(f"Model {model.name} has neither a Hugging Face repo id nor a local folder")
    root = repo_folder(weights_dir, model.repo_id)
    ref = model.revision or "main"
    if COMMIT_RE.match(ref):
        return root / ref
    return root / (_read_ref(root, ref) or ref.replace("/", "%2F"))


def _local_metadata(repo_id: str, revision: str | None, weights_dir: Path) -> RemoteModel | None:
    root = repo_folder(weights_dir, repo_id)
    ref = revision or "main"
    commit = ref if COMMIT_RE.match(ref) else _read_ref(root, ref)
    if commit is None:
        return None
    folder = root / commit
    files = _marker_files(folder, repo_id, commit)
    if files is None:
        return None

    def load(name: str) -> dict | None:
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    remote = tuple(RemoteFile(f["path"], f["size"], f.get("blob_id"), f.get("sha256")) for f in files)
    return RemoteModel(repo_id, commit, remote, gated=False, config=load("config.json"), params=load("params.json"))


def fetch_model_metadata(
    repo_id: str,
    revision: str | None = None,
    *,
    token: Secret | None,
    endpoint: str | None = None,
    offline: bool = False,
    weights_dir: Path | None = None,
    token_source: str | None = None,
    log: logging.Logger | None = None,
) -> RemoteModel:
    """config.json, file sizes, resolved commit and gated flag of a repo, for building a ModelSpec.

    Offline (or ``HF_HUB_OFFLINE=1``) it reads them from a complete copy under ``weights_dir``;
    online it asks the Hub, falling back to that copy when the Hub cannot be reached.
    """
    log = log or logger
    offline = offline or _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE")
    if offline:
        local = _local_metadata(repo_id, revision, weights_dir) if weights_dir else None
        if local is None:
            raise HubUnreachableError(
                f"Offline mode, and no complete copy of {repo_id}@{revision or 'main'} is under {weights_dir}",
                fix="run once online to pre-fetch the weights into the same weights folder, or drop --offline",
            )
        return local
    try:
        remote = hub.fetch_model_metadata(repo_id, revision, token=token, endpoint=endpoint, token_source=token_source)
    except HubUnreachableError:
        local = _local_metadata(repo_id, revision, weights_dir) if weights_dir else None
        if local is None:
            raise
        log.warning("weights: hub unreachable; reading %s from the complete copy at %s", repo_id, local.revision[:12])
        return local
    ref = revision or "main"
    if weights_dir is not None and not COMMIT_RE.match(ref):
        # Remember what the branch resolved to, so a later --offline run finds this copy.
        _write_ref(repo_folder(weights_dir, repo_id), ref, remote.revision)
    return remote

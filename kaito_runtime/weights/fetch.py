"""The resumable, parallel, verifying fetcher: brings each selected file to its real path.

Each file streams into a partial file named after its path and expected hash, through the
client's ``http_get``, chunk by chunk as it arrives (``hub.receive_in_small_chunks``); every
chunk moves the ``progress.TransferCount``. The partial outlives the process (unlike the client's
own per-process temp files), so a run after a kill or crash asks only for the missing bytes (HTTP
Range). A file reaches its real path only after its size and hash (sha256 of LFS files, git blob
sha1 of the others) match, by an atomic rename; nothing half-written ever sits where vLLM looks.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from kaito_runtime import hub
from kaito_runtime.errors import WeightsError
from kaito_runtime.hub import RemoteFile
from kaito_runtime.weights.integrity import expected_digest, file_ok, hash_file, new_hasher, size_is, size_of
from kaito_runtime.weights.progress import TransferCount
from kaito_runtime.types import format_bytes as fmt_bytes
from kaito_runtime.secrets import Secret
from kaito_runtime.weights.store import partial_path


class Cancelled(Exception):
    """Another file failed: stop this one (its partial stays, for the next run to resume)."""


class HashingAppender:
    """The open partial file as ``http_get`` sees it: every appended chunk is hashed on its way
    to disk, so a finished file is verified without reading it back."""

    def __init__(self, fh: Any, hasher: Any | None, stop: threading.Event, fresh: Callable[[], Any | None],
                 on_bytes: Callable[[int], None] | None) -> None:
        self._fh, self.hasher, self._stop, self._fresh, self._on_bytes = fh, hasher, stop, fresh, on_bytes

    def write(self, data: bytes) -> int:
        if self._stop.is_set():
            raise Cancelled()
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


def _silent_tqdm(on_update: Callable[[int], None] | None = None) -> type:
    """A tqdm class for the client that shows nothing; ``on_update`` gets each update's bytes."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    class SilentTqdm(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            if on_update is not None and kwargs.get("initial"):
                on_update(int(kwargs["initial"]))  # the client resumed its own temp file

        def update(self, n: float | None = 1) -> bool | None:
            if on_update is not None and n:
                on_update(int(n))
            return super().update(n)

    return SilentTqdm


def _is_size_check_failure(e: OSError) -> bool:
    """The client's "Consistency check failed" (received bytes != expected size): a plain OSError
    without errno or response, unlike disk errors, HTTP errors and timeouts."""
    return type(e) is OSError and e.errno is None and getattr(e, "response", None) is None


class Fetcher:
    """Brings each file to its real path, verified: resumes its partial file, checks size and hash,
    renames it into place; a mismatch discards the partial and fetches the file once more.

    ``verify``: a file already at its real path with the right size is re-hashed before it is
    trusted (else the size suffices: it was verified before its rename).
    ``count``: moved with every chunk received and every restart of a file (progress reports).
    """

    def __init__(self, repo_id: str, commit: str, folder: Path, token: Secret | None, endpoint: str,
                 log: logging.Logger, count: TransferCount | None = None, verify: bool = False) -> None:
        self.repo_id, self.commit, self.folder, self.token, self.endpoint = repo_id, commit, folder, token, endpoint
        self.log, self.count, self.verify = log, count, verify
        self.stop = threading.Event()
        self.tqdm_class = _silent_tqdm()
        self.http_limit = hub.http_download_limit()

    def _adder(self, f: RemoteFile) -> Callable[[int], None] | None:
        count = self.count
        return None if count is None else (lambda n: count.add(f.path, n))

    def _restart(self, f: RemoteFile, held: int) -> None:
        if self.count is not None:
            self.count.restart(f.path, held)

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
        if size_is(final, f.size) and (not self.verify or file_ok(self.folder, f)):
            # Renamed into place, verified, by a run killed before its marker. No fsync before the
            # rename: after a node crash ext4/xfs show unflushed files short, never padded.
            self._restart(f, f.size)
            return True
        final.unlink(missing_ok=True)
        for attempt in (1, 2):
            if self.stop.is_set():
                raise Cancelled()
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
        have = size_of(part)
        if have > f.size:
            self.log.warning("weights: partial %s is larger than %s; discarding it", part, f.path)
            self._discard(part, f)
            have = 0
        elif have:
            self.log.info("weights: resuming %s at %s of %s", f.path, fmt_bytes(have), fmt_bytes(f.size))
        self._restart(f, have)
        hasher = new_hasher(f)
        if hasher is not None and have:
            hash_file(part, hasher, limit=have)
        part.parent.mkdir(parents=True, exist_ok=True)
        size_ok = True
        with part.open("ab") as fh:
            out = HashingAppender(fh, hasher, self.stop, lambda: new_hasher(f), self._adder(f))
            try:
                hub.download_range(
                    self.repo_id, self.commit, f.path, out,  # type: ignore[arg-type]
                    resume_size=have, expected_size=f.size, token=self.token, endpoint=self.endpoint,
                    tqdm_class=self.tqdm_class,
                )
            except OSError as e:
                if not _is_size_check_failure(e):
                    raise  # a disk error, a timeout, or an HTTP error for hub_errors to translate
                size_ok = False
        ok = size_ok and size_is(part, f.size)
        expected = expected_digest(f)
        if ok and expected is not None:
            digest = out.hasher.hexdigest() if out.hasher is not None else hash_file(part, new_hasher(f))
            ok = digest == expected
        if not ok:
            self._discard(part, f)
            return False
        final = self.folder / f.path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
        return True

    def _whole(self, f: RemoteFile) -> bool:
        # Over the client's plain-HTTP limit the Hub serves the file through Xet only, which the
        # client does not resume across processes; hf_hub_download picks Xet when it can. Its
        # progress reaches us through the tqdm class only.
        self._restart(f, 0)
        try:
            hub.download_whole(
                self.repo_id, self.commit, f.path, self.folder, token=self.token, endpoint=self.endpoint,
                tqdm_class=_silent_tqdm(self._adder(f)),
            )
        except ValueError as e:
            raise WeightsError(
                f"{f.path} of {self.repo_id} ({fmt_bytes(f.size)}) is too large for a plain HTTP download",
                why=str(e).strip().splitlines()[0],
                fix="install the hf_xet package (pip install hf_xet) and leave HF_HUB_DISABLE_XET unset",
            ) from None
        if file_ok(self.folder, f):
            self._restart(f, f.size)
            return True
        (self.folder / f.path).unlink(missing_ok=True)
        self._restart(f, 0)
        return False

    def _discard(self, part: Path, f: RemoteFile) -> None:
        part.unlink(missing_ok=True)
        self._restart(f, 0)

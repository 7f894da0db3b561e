"""A small, real HTTP server that answers like the Hugging Face Hub for model downloads.

Repos are plain folders: ``<root>/<org>/<name>/`` holds the files of repo ``org/name``. Each repo has
one branch, ``main``, whose commit sha is derived from the repo id and its files (deterministic
40-hex), so the same folder always yields the same commit.

The contract (paths, headers, error codes) is the one in shared/reference/hf-hub.md; the real
``huggingface_hub`` client talks to this server through ``HF_ENDPOINT`` or ``endpoint=``.

Auth rule (consistent with the real Hub as far as it is documented):

* an ``Authorization`` header whose token is not a known user token -> 401 with
  ``X-Error-Message: Invalid credentials in Authorization header`` on every call;
* a gated repo's files (``/resolve``) without a token -> 401 ``X-Error-Code: GatedRepo``;
* a gated repo's files with a known token that is not on the repo's accepted list -> 403 GatedRepo;
* metadata (model info, tree) of a gated repo is public, as on the real Hub.

Header-only files: ``<file>`` beside ``<file>.kaito-size`` holds only the first bytes of a file
(a safetensors header) and the sidecar its real size. The listing, HEAD and Content-Range report
the real size; bounded Range requests within the header (or the client's first
``bytes=0-100000`` probe) are answered with the stored bytes padded with zeros; anything else
(a download of the body) is answered 500 and noted in ``body_requests``.

Fault injection, for tests: drop the connection after N bytes of a file body (the first K
times), stall a body after N bytes (the connection stays open and silent), serve corrupted bytes
of the same length, cap the bytes per second of bodies, ignore Range headers (200 with the whole
body, as some proxies do), answer the API calls with a fixed status and body (an odd status,
malformed JSON), delay every answer (a slow hub that keeps answering), split tree listings
into pages (``Link: <…>; rel="next"``, as the real Hub paginates). Every request is recorded
(method, kind, path, range start, status, its headers but Authorization) so tests can count them,
and every byte written to a client (status lines, headers, bodies) is counted (``sent_bytes()``).

Run it standalone: ``python -m tests.support.hub_emulator --root DIR --port P --gated ORG/NAME
--token T`` (prints ``READY <url>`` on stdout when it listens).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_LFS_THRESHOLD = 10 * 1000 * 1000
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_CHUNK = 256 * 1024
SIZE_SIDECAR = ".kaito-size"  # "<file>.kaito-size" holds the real size of a header-only <file>
HEADER_PROBE_END = 100_000  # huggingface_hub reads a safetensors header with Range bytes=0-100000
_POINTER_SIZE = 134


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    blob_sha1: str
    sha256: str | None  # set for LFS files only
    stored: int | None = None  # a header-only file: the bytes on disk (the rest is never stored)

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_sha1

    def tree_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_sha1, "size": self.size, "path": self.path}
        if self.sha256:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": _POINTER_SIZE}
        return entry


@dataclass
class RepoState:
    repo_id: str
    folder: Path
    gated: bool = False
    accepted_tokens: set[str] = field(default_factory=set)
    files: dict[str, FileEntry] = field(default_factory=dict)
    commit: str = ""


@dataclass(frozen=True)
class RequestRecord:
    method: str
    kind: str  # model_info | tree | paths_info | resolve | other
    path: str
    range_start: int | None
    status: int
    authorized: bool  # an Authorization header was sent
    headers: tuple[tuple[str, str], ...] = ()  # lower-cased names; never Authorization

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)


@dataclass
class _Drop:
    after_bytes: int
    times: int


def git_blob_sha1(data_path: Path) -> str:
    size = data_path.stat().st_size
    h = hashlib.sha1(f"blob {size}\0".encode())
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(data_path: Path) -> str:
    h = hashlib.sha256()
    with data_path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _corrupt(chunk: bytes, offset: int) -> bytes:
    """Flip one bit every 4096 bytes (positions are absolute, so ranged reads agree)."""
    out = bytearray(chunk)
    first = (-offset) % 4096
    for i in range(first, len(out), 4096):
        out[i] ^= 0x01
    return bytes(out)


class HubEmulator:
    """The server plus its state; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        root: Path | str,
        *,
        lfs_threshold: int = DEFAULT_LFS_THRESHOLD,
        valid_tokens: set[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.root = Path(root)
        self.lfs_threshold = lfs_threshold
        self.valid_tokens: set[str] = set(valid_tokens or ())
        self.host = host
        self.port = port
        self.records: list[RequestRecord] = []
        self._sent_bytes = 0  # every byte written to clients: status lines, headers and bodies
        self.body_requests: list[str] = []  # header-only files asked for past their header
        self.rate_limit_bps: int | None = None
        self.ignore_range = False  # answer 200 with the whole body even to a Range request (some proxies do)
        self._gated: dict[str, set[str]] = {}
        self._repos: dict[str, RepoState] = {}
        self._drops: dict[str, _Drop] = {}
        self._corrupt: dict[str, int | None] = {}  # "repo/path" -> times left (None = always)
        self._stalls: dict[str, int] = {}  # "repo/path" -> bytes sent before going silent
        self._stopping = threading.Event()
        self.api_answer: tuple[int, bytes] | None = None  # (status, body) for every /api/ call
        self.answer_delay_s = 0.0  # wait this long before every status line (a slow, not silent, hub)
        self.tree_page_size: int | None = None  # entries per tree page (None: one page)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- configuration --------------------------------------------------------------------------

    def gate(self, repo_id: str, accepted_tokens: set[str] | list[str] = ()) -> None:
        """Make a repo gated; ``accepted_tokens`` were granted access (they also become valid users)."""
        with self._lock:
            self._gated[repo_id] = set(accepted_tokens)
            self.valid_tokens |= set(accepted_tokens)
            self._repos.pop(repo_id, None)

    def drop_connection(self, repo_id: str, path: str, *, after_bytes: int, times: int = 1) -> None:
        with self._lock:
            self._drops[f"{repo_id}/{path}"] = _Drop(after_bytes, times)

    def stall(self, repo_id: str, path: str, *, after_bytes: int) -> None:
        """Every body of this file stops after ``after_bytes``; the connection stays open, silent."""
        with self._lock:
            self._stalls[f"{repo_id}/{path}"] = after_bytes

    def corrupt(self, repo_id: str, path: str, *, times: int | None = None) -> None:
        with self._lock:
            self._corrupt[f"{repo_id}/{path}"] = times

    def busy(self, status: int, *, times: int | None, retry_after: str | None = None) -> None:
        """Answer the next ``times`` requests (None: every one) with ``status`` (503 or 429) and
        ``Retry-After``, as a hub under load does."""
        with self._lock:
            self._busy = (status, times, retry_after)

    def _take_busy(self) -> tuple[int, str | None] | None:
        with self._lock:
            busy = getattr(self, "_busy", None)
            if busy is None or busy[1] == 0:
                return None
            status, times, retry_after = busy
            self._busy = (status, None if times is None else times - 1, retry_after)
            return status, retry_after

    def refresh(self) -> None:
        """Forget the indexed files (call after changing a repo folder)."""
        with self._lock:
            self._repos.clear()

    def commit_of(self, repo_id: str) -> str:
        repo = self._repo(repo_id)
        assert repo is not None, f"no repo {repo_id} under {self.root}"
        return repo.commit

    def file_entry(self, repo_id: str, path: str) -> FileEntry:
        repo = self._repo(repo_id)
        assert repo is not None
        return repo.files[path]

    # --- request accounting ---------------------------------------------------------------------

    def clear_records(self) -> None:
        with self._lock:
            self.records.clear()

    def count(self, *, method: str | None = None, kind: str | None = None, path_contains: str = "") -> int:
        with self._lock:
            return sum(
                1
                for r in self.records
                if (method is None or r.method == method)
                and (kind is None or r.kind == kind)
                and path_contains in r.path
            )

    def sent_bytes(self) -> int:
        """Bytes written to clients so far (status lines, headers, bodies), every request counted."""
        with self._lock:
            return self._sent_bytes

    def _count_sent(self, n: int) -> None:
        with self._lock:
            self._sent_bytes += n

    def body_gets(self) -> int:
        """GET requests for file bodies (what a warm start must never send)."""
        return self.count(method="GET", kind="resolve")

    def range_starts(self, path_contains: str = "") -> list[int]:
        with self._lock:
            return [
                r.range_start
                for r in self.records
                if r.method == "GET" and r.kind == "resolve" and path_contains in r.path and r.range_start is not None
            ]

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "emulator not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubEmulator:
        self._stopping.clear()
        handler = type("BoundHandler", (_Handler,), {"emulator": self})
        self._server = ThreadingHTTPServer((self.host, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled bodies
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- internals ------------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> RepoState | None:
        with self._lock:
            cached = self._repos.get(repo_id)
            if cached is not None:
                return cached
        folder = self.root / repo_id
        if repo_id.count("/") != 1 or not folder.is_dir() or ".." in repo_id:
            return None
        files: dict[str, FileEntry] = {}
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p.name.endswith(SIZE_SIDECAR):
                continue
            rel = p.relative_to(folder).as_posix()
            size = p.stat().st_size
            sidecar = p.with_name(p.name + SIZE_SIDECAR)
            if sidecar.is_file():  # header only: the real size is declared, the body never stored
                declared = int(sidecar.read_text().strip())
                digest_of = hashlib.sha256(p.read_bytes() + str(declared).encode()).hexdigest()
                files[rel] = FileEntry(rel, declared, digest_of[:40], digest_of, stored=size)
                continue
            sha256 = file_sha256(p) if size >= self.lfs_threshold else None
            files[rel] = FileEntry(rel, size, git_blob_sha1(p), sha256)
        digest = hashlib.sha1(repo_id.encode())
        for rel, entry in files.items():
            digest.update(f"{rel}\0{entry.blob_sha1}\0".encode())
        with self._lock:
            gated = repo_id in self._gated
            repo = RepoState(
                repo_id,
                folder,
                gated=gated,
                accepted_tokens=set(self._gated.get(repo_id, ())),
                files=files,
                commit=digest.hexdigest(),
            )
            self._repos[repo_id] = repo
        return repo

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.records.append(rec)

    def _take_drop(self, key: str) -> int | None:
        with self._lock:
            drop = self._drops.get(key)
            if drop is None or drop.times <= 0:
                return None
            drop.times -= 1
            return drop.after_bytes

    def _take_corrupt(self, key: str) -> bool:
        with self._lock:
            if key not in self._corrupt:
                return False
            left = self._corrupt[key]
            if left is None:
                return True
            if left <= 0:
                return False
            self._corrupt[key] = left - 1
            return True


_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/(?P<op>revision|tree|paths-info)/(?P<rest>.+))?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _HubError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, commit: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit
        self.retry_after = retry_after


class _CountingWriter:
    """The handler's output stream, telling ``count`` how many bytes each write hands over (before
    the write: a client that has read them always finds them counted)."""

    def __init__(self, raw: Any, count: Any) -> None:
        self._raw, self._count = raw, count

    def write(self, data: bytes) -> int:
        self._count(len(data))
        return self._raw.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(BaseHTTPRequestHandler):
    emulator: HubEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr access log
        pass

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.emulator._count_sent)

    # --- dispatch -------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        token = self._token()
        # Recorded when the status line goes out (send_response), so a client that has read the
        # answer always finds its request in the records.
        headers = tuple((k.lower(), v) for k, v in self.headers.items() if k.lower() != "authorization")
        self._pending: dict[str, Any] | None = {
            "method": method, "kind": "other", "path": path, "range_start": None, "authorized": token is not None,
            "headers": headers,
        }
        if self.emulator.answer_delay_s > 0:
            self.emulator._stopping.wait(self.emulator.answer_delay_s)
        try:
            if busy := self.emulator._take_busy():
                raise _HubError(busy[0], "The hub is busy, try again later", retry_after=busy[1])
            if token is not None and token not in self.emulator.valid_tokens:
                raise _HubError(401, INVALID_CREDENTIALS)
            if m := _RESOLVE_RE.match(path):
                self._pending.update(kind="resolve", range_start=self._range_start())
                self._resolve(method, m["repo"], unquote(m["rev"]), unquote(m["path"]), token)
            elif m := _API_RE.match(path):
                op, rest = m["op"], m["rest"]
                kind = {None: "model_info", "revision": "model_info", "tree": "tree", "paths-info": "paths_info"}[op]
                self._pending.update(kind=kind)
                if self.emulator.api_answer is not None:
                    self._send_raw(*self.emulator.api_answer)
                    return
                repo = self._require_repo(m["repo"])
                if op is None:
                    self._model_info(repo, "main", query)
                elif op == "revision":
                    self._model_info(repo, unquote(rest), query)
                elif op == "tree":
                    rev, _, sub = rest.partition("/")
                    self._tree(repo, unquote(rev), unquote(sub), query)
                else:
                    self._paths_info(repo, unquote(rest))
            else:
                raise _HubError(404, "Not Found")
        except _HubError as e:
            self._send_error(e, head=method == "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def send_response(self, code: int, message: str | None = None) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is not None:
            self.emulator._record(RequestRecord(status=code, **pending))
        super().send_response(code, message)

    # --- helpers --------------------------------------------------------------------------------

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        return auth.removeprefix("Bearer ").strip() or None

    def _range_start(self) -> int | None:
        m = _RANGE_RE.match(self.headers.get("Range", ""))
        return int(m.group(1)) if m else None

    def _require_repo(self, repo_id: str) -> RepoState:
        repo = self.emulator._repo(repo_id)
        if repo is None:
            raise _HubError(404, "Repository Not Found", "RepoNotFound")
        return repo

    def _check_revision(self, repo: RepoState, rev: str) -> None:
        if rev not in ("main", repo.commit):
            raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _send_json(self, obj: Any, status: int = 200, extra_headers: dict[str, str] | None = None) -> int:
        body = json.dumps(obj).encode()
        self.send_response(status)
        for name, value in (extra_headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status

    def _send_raw(self, status: int, body: bytes) -> int:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return status

    def _send_error(self, e: _HubError, *, head: bool) -> None:
        body = json.dumps({"error": e.message}).encode()
        self.send_response(e.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", e.message)
        if e.code:
            self.send_header("X-Error-Code", e.code)
        if e.commit:
            self.send_header("X-Repo-Commit", e.commit)
        if e.retry_after is not None:
            self.send_header("Retry-After", e.retry_after)
        self.send_header("Content-Length", "0" if head else str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # --- endpoints ------------------------------------------------------------------------------

    def _model_info(self, repo: RepoState, rev: str, query: dict[str, str]) -> int:
        self._check_revision(repo, rev)
        blobs = query.get("blobs", "").lower() == "true"
        siblings = []
        for entry in repo.files.values():
            sib: dict[str, Any] = {"rfilename": entry.path}
            if blobs:
                sib["size"] = entry.size
                sib["blobId"] = entry.blob_sha1
                if entry.sha256:
                    sib["lfs"] = {"size": entry.size, "sha256": entry.sha256, "pointerSize": _POINTER_SIZE}
            siblings.append(sib)
        info = {
            "_id": repo.commit[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": repo.commit,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        return self._send_json(info)

    def _tree(self, repo: RepoState, rev: str, sub: str, query: dict[str, str]) -> int:
        self._check_revision(repo, rev)
        recursive = query.get("recursive", "false").lower() == "true"
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in repo.files):
            raise _HubError(404, f"Entry {sub} not found", "EntryNotFound", repo.commit)
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for path, entry in repo.files.items():
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d})
            if recursive or len(parts) == 1:
                out.append(entry.tree_json())
        size = self.emulator.tree_page_size
        if size is None:
            return self._send_json(out)
        cursor = int(query.get("cursor", "0"))
        extra: dict[str, str] = {}
        if cursor + size < len(out):
            params = "&".join(f"{k}={v}" for k, v in {**query, "cursor": str(cursor + size)}.items())
            extra["Link"] = f'<{self.emulator.url}{urlsplit(self.path).path}?{params}>; rel="next"'
        return self._send_json(out[cursor : cursor + size], extra_headers=extra)

    def _paths_info(self, repo: RepoState, rev: str) -> int:
        self._check_revision(repo, rev)
        form = parse_qs(getattr(self, "_body", b"").decode())
        wanted = form.get("paths", [])
        return self._send_json([repo.files[p].tree_json() for p in wanted if p in repo.files])

    def _resolve(self, method: str, repo_id: str, rev: str, path: str, token: str | None) -> int:
        repo = self._require_repo(repo_id)
        self._check_revision(repo, rev)
        if repo.gated and token not in repo.accepted_tokens:
            if token is None:
                raise _HubError(
                    401,
                    f"Access to model {repo_id} is restricted. You must have access to it and be "
                    "authenticated to access it. Please log in.",
                    "GatedRepo",
                )
            raise _HubError(
                403,
                f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                f"Visit https://huggingface.co/{repo_id} to ask for access.",
                "GatedRepo",
            )
        entry = repo.files.get(path)
        if entry is None:
            raise _HubError(404, f"Entry {path} not found", "EntryNotFound", repo.commit)

        start, end = 0, entry.size - 1
        partial = False
        if entry.stored is not None and method == "GET" and not self._header_read(entry):
            with self.emulator._lock:
                self.emulator.body_requests.append(f"{repo_id}/{path} {self.headers.get('Range') or 'whole file'}")
            raise _HubError(500, f"The emulator stores only the header of {path}; its body was asked for")
        if not self.emulator.ignore_range and (rh := self.headers.get("Range")) and (m := _RANGE_RE.match(rh)):
            start = int(m.group(1))
            end = min(int(m.group(2)), entry.size - 1) if m.group(2) else entry.size - 1
            if start >= entry.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{entry.size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416
            partial = True
        length = end - start + 1 if entry.size else 0

        status = 206 if partial else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{entry.etag}"')
        self.send_header("X-Repo-Commit", repo.commit)
        if partial:
            self.send_header("Content-Range", f"bytes {start}-{end}/{entry.size}")
        self.end_headers()
        if method == "HEAD":
            return status

        if entry.stored is not None:
            self._stream_header_only(repo.folder / path, entry, start, end, partial)
            return status
        key = f"{repo_id}/{path}"
        drop_after = self.emulator._take_drop(key)
        corrupt = self.emulator._take_corrupt(key)
        with self.emulator._lock:
            stall_at = self.emulator._stalls.get(key)
        stall_after = None if stall_at is None else max(stall_at - start, 0)
        self._stream(repo.folder / path, start, length, drop_after, corrupt, stall_after)
        return status

    def _header_read(self, entry: FileEntry) -> bool:
        """A bounded Range request within the header (or within the client's fixed first probe)."""
        m = _RANGE_RE.match(self.headers.get("Range", ""))
        if not m or not m.group(2):
            return False
        assert entry.stored is not None
        return int(m.group(2)) <= max(entry.stored - 1, HEADER_PROBE_END)

    def _stream_header_only(self, file: Path, entry: FileEntry, start: int, end: int, partial: bool) -> None:
        """The stored header bytes, then zeros up to the asked end (the probe reads past the header)."""
        data = file.read_bytes()[start : end + 1]
        self.wfile.write(data + b"\0" * (end - start + 1 - len(data)))

    def _stream(
        self, file: Path, start: int, length: int, drop_after: int | None, corrupt: bool, stall_after: int | None = None
    ) -> None:
        sent = 0
        began = time.monotonic()
        rate = self.emulator.rate_limit_bps
        # Rate-limited bodies go out in pieces of ~50 ms each, so even a small file takes its time.
        piece = min(_CHUNK, max(4096, rate // 20)) if rate else _CHUNK
        with file.open("rb") as f:
            f.seek(start)
            while sent < length:
                want = min(piece, length - sent)
                if stall_after is not None:
                    want = min(want, stall_after - sent)
                    if want <= 0:
                        self.wfile.flush()
                        self.emulator._stopping.wait(120)  # silent, connection open
                        self._abort()
                        return
                if drop_after is not None:
                    want = min(want, drop_after - sent)
                    if want <= 0:
                        self._abort()
                        return
                chunk = f.read(want)
                if not chunk:
                    break
                if corrupt:
                    chunk = _corrupt(chunk, start + sent)
                self.wfile.write(chunk)
                sent += len(chunk)
                if rate:
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)

    def _abort(self) -> None:
        """Cut the connection mid-body, as a flaky network would."""
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve folders as Hugging Face model repos over HTTP.")
    parser.add_argument("--root", required=True, type=Path, help="folder holding <org>/<name>/ repos")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--gated", action="append", default=[], help="ORG/NAME to gate (repeatable)")
    parser.add_argument("--token", action="append", default=[], help="token granted access to the gated repos")
    parser.add_argument("--valid-token", action="append", default=[], help="a known user token without grants")
    parser.add_argument("--lfs-threshold", type=int, default=DEFAULT_LFS_THRESHOLD)
    parser.add_argument("--rate-limit", type=int, default=None, help="cap body bytes per second per response")
    args = parser.parse_args(argv)

    emulator = HubEmulator(
        args.root, lfs_threshold=args.lfs_threshold, valid_tokens=set(args.valid_token), host=args.host, port=args.port
    )
    for repo_id in args.gated:
        emulator.gate(repo_id, args.token)
    emulator.rate_limit_bps = args.rate_limit
    emulator.start()
    print(f"READY {emulator.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

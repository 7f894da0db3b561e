"""Metadata from the Hugging Face Hub, and the translation of its errors into ours.

Every call goes through the ``huggingface_hub`` client with an explicit ``endpoint`` (the client
reads ``HF_ENDPOINT`` only once, at import). Tokens travel as ``Secret`` and are revealed only at
the call into the client. The client is imported lazily (start-up stays fast, and this module
imports under any client version).

Every call is bounded by ``hub_timeouts`` (``KAITO_HUB_TIMEOUT`` seconds of silence, not of
total time); a silent Hub ends in HubUnreachableError. Files sent through Xet are the exception
(see ``download_whole``).
"""

from __future__ import annotations

import json
import logging
import re
import urllib.parse
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from kaito_runtime.errors import (
    GatedAccessDeniedError,
    GatedRepoNoTokenError,
    HubUnreachableError,
    KaitoError,
    RepoNotFoundError,
    InputError,
    RevisionNotFoundError,
    TokenRejectedError,
    WeightsError,
)
from kaito_runtime.hub.timeouts import TIMEOUT_ENV, bounded, current_timeout_s
from kaito_runtime.secrets import Secret
from kaito_runtime.types import COMMIT_RE, RemoteFile, RemoteModel

logger = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_HINT = "set HF_TOKEN, or mount the token and pass --token-file / KAITO_HF_TOKEN_FILE"

# The bytes the client hands over per chunk of a download body (its default is 10 MiB, which it
# buffers in memory before writing or reporting any of it). About one network read.
RECEIVE_CHUNK_BYTES = 64 * 1024


# --- repo ids ---------------------------------------------------------------------------------

# The client's own rule (huggingface_hub's validate_repo_id), with the namespace required: each
# part 1-96 ASCII letters, digits, '-', '_', '.', starting and ending with a letter, digit or '_';
# no '--' or '..' anywhere; not ending in '.git'.
REPO_ID_MAX_PART = 96
_REPO_PART_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_REPO_PART_CHARS = re.compile(r"[A-Za-z0-9_.-]")
REPO_ID_FORM = (
    "org/name: letters, digits, '-', '_' and '.', each part at most 96 characters, "
    "not starting or ending with '-' or '.', without '--' or '..'"
)


def repo_id_problem(text: str) -> str | None:
    """Why ``text`` is not a Hugging Face repo id of the form org/name (None when it is one)."""
    parts = text.split("/")
    if len(parts) != 2:
        return f"It has {len(parts) - 1} '/' (a repo id has exactly one, between org and name)"
    for label, part in zip(("org", "name"), parts):
        if not part:
            return f"The {label} part is empty"
        bad = sorted({c for c in part if not _REPO_PART_CHARS.fullmatch(c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad[:5])
            return f"The {label} part {part!r} holds {shown}, which a repo id may not contain"
        if len(part) > REPO_ID_MAX_PART:
            return f"The {label} part is {len(part)} characters long (at most {REPO_ID_MAX_PART})"
        if not _REPO_PART_RE.fullmatch(part):
            return f"The {label} part {part!r} starts or ends with '-' or '.'"
    for pair in ("--", ".."):
        if pair in text:
            return f"It contains {pair!r}"
    if text.endswith(".git"):
        return "It ends with '.git'"
    return None


def check_repo_id(text: str) -> None:
    """Raise InputError (exit 2) unless ``text`` is a well-formed org/name repo id; no network."""
    problem = repo_id_problem(text)
    if problem is not None:
        raise InputError(
            f"{text!r} is not a valid Hugging Face repo id",
            why=problem,
            fix=f"use the form {REPO_ID_FORM} (e.g. my-org/my-model), or the path of an existing model folder",
        )


def resolve_endpoint(endpoint: str | None) -> str:
    """The hub to ask: the caller's endpoint (the API passes HF_ENDPOINT from its environment),
    else the public Hub. Credentials in it are registered for redaction."""
    from kaito_runtime.secrets import register_secret

    resolved = (endpoint or DEFAULT_ENDPOINT).rstrip("/")
    userinfo = urllib.parse.urlsplit(resolved).netloc.rpartition("@")[0]
    if userinfo:
        register_secret(userinfo)
        register_secret(userinfo.partition(":")[2])
    return resolved


def shown_endpoint(endpoint: str) -> str:
    """``endpoint`` without its user information (``http://user:pass@host`` -> ``http://host``)."""
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=host)) if host != parts.netloc else endpoint


def client_token(token: Secret | None) -> str | bool:
    """What to hand the client: the token, or False so it never picks one up on its own."""
    return token.reveal() if token else False


# --- error translation ------------------------------------------------------------------------


def _connection_error_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("ConnectError", "TimeoutException", "RemoteProtocolError", "NetworkError")),
        ("httpx", ("ConnectError", "TimeoutException", "RemoteProtocolError", "NetworkError")),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        types.extend(getattr(mod, n) for n in names if hasattr(mod, n))
    return tuple(types)


def translate_error(
    exc: BaseException, *, repo_id: str, revision: str | None, token_source: str, endpoint: str
) -> KaitoError | None:
    """Our error for a client exception (carrying ``repo_id``), or None when it is not a
    Hub/network failure."""
    error = _translated(exc, repo_id=repo_id, revision=revision, token_source=token_source, endpoint=endpoint)
    if error is not None and error.repo_id is None:
        error.repo_id = repo_id
    return error


def _translated(
    exc: BaseException, *, repo_id: str, revision: str | None, token_source: str, endpoint: str
) -> KaitoError | None:
    from huggingface_hub import errors as hf

    has_token = token_source != "none"
    page = f"{endpoint}/{repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.GatedRepoError):
        if not has_token:
            return GatedRepoNoTokenError(
                f"Model {repo_id} is gated and no Hugging Face token was given",
                why="The Hub answers downloads of a gated repo only for accounts granted access",
                fix=f"accept the licence at {page}, then {TOKEN_HINT}",
            )
        if status == 401:
            return TokenRejectedError(
                f"The Hugging Face token from {token_source} was rejected for {repo_id}",
                why="The Hub did not accept it (expired, revoked or mistyped)",
                fix=f"create a new read token at {endpoint}/settings/tokens and {TOKEN_HINT}",
            )
        return GatedAccessDeniedError(
            f"The Hugging Face token from {token_source} has no access to gated model {repo_id}",
            why="The account is not (yet) in the repo's authorized list",
            fix=f"request access at {page} and wait for the grant, or use a token of an account that has it",
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"Revision {revision} of {repo_id} does not exist on {endpoint}",
            fix=f"use a branch, tag or 40-hex commit listed at {page}/commits/main",
        )
    if isinstance(exc, hf.RepositoryNotFoundError):
        return RepoNotFoundError(
            f"Model repo {repo_id} was not found on {endpoint}",
            why="The id is wrong, or the repo is private" + ("" if has_token else " and no token was given"),
            fix="check the spelling (org/name, case-sensitive)" + ("" if has_token else f"; for a private repo {TOKEN_HINT}"),
        )
    if isinstance(exc, hf.EntryNotFoundError) and not isinstance(exc, hf.LocalEntryNotFoundError):
        return WeightsError(
            f"A file of {repo_id} at {revision} is missing on {endpoint}",
            why=str(exc).splitlines()[0],
            fix="pick a revision that has the model's files",
        )
    if isinstance(exc, hf.HfHubHTTPError) and status is not None:
        if status == 401:
            if has_token:
                return TokenRejectedError(
                    f"The Hugging Face token from {token_source} was rejected",
                    why="The Hub answered 401 (invalid credentials)",
                    fix=f"create a new read token at {endpoint}/settings/tokens and {TOKEN_HINT}",
                )
            return RepoNotFoundError(
                f"Model repo {repo_id} needs authentication on {endpoint}",
                why="The Hub answered 401 to an anonymous request",
                fix=TOKEN_HINT,
            )
        if status == 403:
            return GatedAccessDeniedError(
                f"The Hugging Face token from {token_source} may not read {repo_id}",
                why="The Hub answered 403 Forbidden",
                fix=f"give the token read access to {repo_id} (fine-grained tokens need it), or request access at {page}",
            )
        if status >= 500 or status in (408, 429):
            retry_after = _retry_after_text(exc)
            return HubUnreachableError(
                f"The Hub at {endpoint} failed to answer for {repo_id}",
                why=f"HTTP {status}" + (f" (Retry-After: {retry_after})" if retry_after else ""),
                fix="retry later, or run with --offline using a pre-fetched copy of the weights",
            )
    if isinstance(exc, (hf.OfflineModeIsEnabled, hf.LocalEntryNotFoundError, *_connection_error_types())):
        return HubUnreachableError(
            f"The Hugging Face Hub at {endpoint} cannot be reached, and no complete copy of {repo_id} is on disk",
            why=type(exc).__name__ + (f": {str(exc).splitlines()[0]}" if str(exc) else ""),
            fix="check the network / HF_ENDPOINT / proxy settings (a hub silent for "
            f"{TIMEOUT_ENV} seconds is given up on), or pre-fetch the weights into the weights folder and run with --offline",
        )
    return None


@contextmanager
def hub_errors(*, repo_id: str, revision: str | None, token_source: str, endpoint: str) -> Iterator[None]:
    """Re-raise client exceptions as our errors (with what, why and fix; never the token, nor
    credentials in the endpoint)."""
    endpoint = shown_endpoint(endpoint)
    try:
        yield
    except KaitoError:
        raise
    except Exception as exc:
        ours = translate_error(exc, repo_id=repo_id, revision=revision, token_source=token_source, endpoint=endpoint)
        if ours is not None:
            raise ours from None
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a local disk error: the weights step names the path and the fix
        logger.debug("unexpected failure talking to %s", endpoint, exc_info=True)
        raise unexpected_answer(exc, repo_id=repo_id, endpoint=endpoint) from None


def unexpected_answer(exc: BaseException, *, repo_id: str, endpoint: str) -> WeightsError:
    """Our error for a hub failure nothing else explains (odd status, malformed JSON …)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    why = (f"HTTP {status}: " if status is not None else "") + type(exc).__name__ + (f": {text}" if text else "")
    return WeightsError(
        f"Unexpected answer from the Hub at {endpoint} for {repo_id}",
        why=why,
        fix="check that HF_ENDPOINT points at a Hugging Face Hub (or a mirror speaking its API), then retry",
    )


# --- a busy hub -------------------------------------------------------------------------------

BUSY_STATUSES = (429, 503)  # "too many requests" / "service unavailable": worth waiting for
BUSY_RETRIES = 4  # then the hub counts as unreachable (exit 16)
BUSY_FIRST_WAIT_S = 1.0  # without Retry-After: 1, 2, 4, 8 s


def _status_of(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _retry_after_text(exc: BaseException) -> str | None:
    headers = getattr(getattr(exc, "response", None), "headers", None)
    return headers.get("Retry-After") if headers is not None else None


def _retry_after_s(exc: BaseException, attempt: int) -> float:
    """Seconds the hub asked us to wait (Retry-After in seconds), else an exponential back-off."""
    text = (_retry_after_text(exc) or "").strip()
    try:
        return max(0.0, float(text))
    except ValueError:  # absent, or an HTTP date: back off on our own
        return BUSY_FIRST_WAIT_S * 2**attempt


def retrying_when_busy(what: str, call: Callable[[], T]) -> T:
    """``call()``, repeated while the hub answers 429/503, at most BUSY_RETRIES times, each wait as
    its Retry-After asks and logged. A wait longer than the hub timeout is not made: the answer
    then fails as it is (HubUnreachableError, exit 16, naming the status and the Retry-After)."""
    limit_s = current_timeout_s()
    for attempt in range(BUSY_RETRIES + 1):
        try:
            return call()
        except Exception as exc:  # the client's HTTP error types differ across its versions
            status = _status_of(exc)
            if status not in BUSY_STATUSES or attempt == BUSY_RETRIES:
                raise
            wait_s = _retry_after_s(exc, attempt)
            if wait_s > limit_s:
                raise
            logger.warning(
                "hub: %s answered %d (busy, Retry-After %s); retrying in %.0f s (%d of %d)",
                what, status, _retry_after_text(exc) or "not given", wait_s, attempt + 1, BUSY_RETRIES,
            )
            time.sleep(wait_s)
    raise AssertionError("unreachable")


# --- metadata calls ---------------------------------------------------------------------------


def _api(endpoint: str, token: Secret | None) -> Any:
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=client_token(token))


def resolve_revision(repo_id: str, revision: str | None, *, token: Secret | None, endpoint: str) -> tuple[str, bool]:
    """(40-hex commit, gated) for a branch, tag or commit (one model-info call)."""
    what = f"model info of {repo_id}"

    def ask() -> Any:
        with bounded(what):
            return _api(endpoint, token).model_info(repo_id, revision=revision or "main")

    info = retrying_when_busy(what, ask)
    if not info.sha or not COMMIT_RE.match(info.sha):
        raise WeightsError(
            f"The Hub at {endpoint} gave no commit for {repo_id}@{revision or 'main'}",
            fix="check HF_ENDPOINT points at a Hugging Face Hub",
        )
    return info.sha, bool(info.gated)


def list_files(repo_id: str, commit: str, *, token: Secret | None, endpoint: str) -> tuple[RemoteFile, ...]:
    from huggingface_hub.hf_api import RepoFile

    what = f"the file list of {repo_id}"

    def ask() -> list[RemoteFile]:
        out = []
        with bounded(what):
            for entry in _api(endpoint, token).list_repo_tree(repo_id, recursive=True, revision=commit):
                if isinstance(entry, RepoFile):
                    sha256 = entry.lfs.sha256 if entry.lfs is not None else None
                    out.append(RemoteFile(entry.path, int(entry.size), entry.blob_id, sha256))
        return out

    return tuple(sorted(retrying_when_busy(what, ask), key=lambda f: f.path))


def probe_access(repo_id: str, commit: str, filename: str, *, token: Secret | None, endpoint: str) -> None:
    """One HEAD on a file: gated / bad-token failures surface here, in about a second."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    what = f"{filename} of {repo_id}"

    def ask() -> None:
        with bounded(what):
            get_hf_file_metadata(url, token=client_token(token), endpoint=endpoint)

    retrying_when_busy(what, ask)


def http_download_limit() -> int:
    """The largest file the client fetches over plain HTTP (bigger ones need Xet)."""
    from huggingface_hub import constants

    return int(constants.MAX_HTTP_DOWNLOAD_SIZE)


def download_range(
    repo_id: str,
    commit: str,
    filename: str,
    out: BinaryIO,
    *,
    resume_size: int,
    expected_size: int,
    token: Secret | None,
    endpoint: str,
    tqdm_class: type | None = None,
) -> None:
    """Append the bytes of ``filename`` after its first ``resume_size`` to ``out``.

    The client's own ``http_get``: a ``Range: bytes=<resume_size>-`` request when resuming, its
    retries (with Range) on dropped connections, its status-to-error mapping, and its check that
    ``resume_size`` + received == ``expected_size`` (an ``OSError`` without errno otherwise). A
    server that ignores Range answers 200; ``http_get`` then truncates ``out`` and starts over.
    Redirects to a CDN are followed without the Authorization header (httpx drops it off-host).
    Raises HubTimeout once no byte has arrived for ``KAITO_HUB_TIMEOUT`` seconds.
    """
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    receive_in_small_chunks()
    url = hf_hub_url(repo_id, filename, revision=commit, endpoint=endpoint)
    with bounded(filename):
        http_get(
            url,
            out,
            resume_size=resume_size,
            headers=build_hf_headers(token=client_token(token)),
            expected_size=expected_size,
            displayed_filename=filename,
            tqdm_class=tqdm_class,
        )


def receive_in_small_chunks() -> None:
    """Make the client write (and report) a download body as it arrives, not every 10 MiB.

    ``http_get`` reads ``constants.DOWNLOAD_CHUNK_SIZE`` at each call and holds that many bytes in
    memory before the first write or progress update: on a slow link the partial file and the
    progress stood still for minutes, and a killed run lost up to 10 MiB per file. The constant
    is process-wide (the client has no per-call setting); smaller chunks only make its downloads
    write sooner, at the same throughput.
    """
    from huggingface_hub import constants

    if constants.DOWNLOAD_CHUNK_SIZE > RECEIVE_CHUNK_BYTES:
        constants.DOWNLOAD_CHUNK_SIZE = RECEIVE_CHUNK_BYTES


def download_whole(
    repo_id: str, commit: str, filename: str, local_dir: Path, *, token: Secret | None, endpoint: str, tqdm_class: type | None = None
) -> Path:
    """``hf_hub_download`` into ``local_dir`` (Xet when available; restarts from zero if interrupted).

    Its HTTP requests get the hub timeout each, but no silence limit across them: a Xet transfer
    moves its bytes outside the hooks' sight, so a later request (a Xet token refresh) must not be
    refused for the silence the hooks saw meanwhile. A stalled Xet transfer is not bounded by us.
    """
    from huggingface_hub import hf_hub_download

    receive_in_small_chunks()
    with bounded(filename, stops_retries=False):
        return Path(
            hf_hub_download(
                repo_id, filename, revision=commit, local_dir=local_dir, token=client_token(token), endpoint=endpoint,
                tqdm_class=tqdm_class,
            )
        )


def _read_json_file(repo_id: str, commit: str, filename: str, *, token: Secret | None, endpoint: str) -> dict | None:
    from huggingface_hub import hf_hub_download

    what = f"{filename} of {repo_id}"
    with tempfile.TemporaryDirectory(prefix="kaito-meta-") as tmp:

        def ask() -> str:
            with bounded(what):
                return hf_hub_download(
                    repo_id, filename, revision=commit, local_dir=tmp, token=client_token(token), endpoint=endpoint
                )

        path = retrying_when_busy(what, ask)
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except ValueError as e:  # also UnicodeDecodeError
            raise WeightsError(
                f"{filename} of {repo_id} at {commit[:12]} on {endpoint} is not valid JSON",
                why=f"{type(e).__name__}: {e}",
                fix="check the repo (its config files must be JSON) or pick another revision",
            ) from None
    if not isinstance(data, dict):
        raise WeightsError(
            f"{filename} of {repo_id} at {commit[:12]} on {endpoint} is not a JSON object",
            why=f"it holds a {type(data).__name__}",
            fix="check the repo (its config files must be JSON objects) or pick another revision",
        )
    return data


def fetch_model_metadata(
    repo_id: str,
    revision: str | None = None,
    *,
    token: Secret | None,
    endpoint: str | None = None,
    token_source: str | None = None,
) -> RemoteModel:
    """config.json (and params.json), the file list with sizes, the resolved commit, gated flag.

    For ``--model ORG/NAME`` the lead builds a ModelSpec from this before planning; the commit
    returned pins the later weight download.
    """
    check_repo_id(repo_id)
    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    with hub_errors(repo_id=repo_id, revision=revision, token_source=source, endpoint=ep):
        commit, gated = resolve_revision(repo_id, revision, token=token, endpoint=ep)
        files = list_files(repo_id, commit, token=token, endpoint=ep)
        names = {f.path for f in files}
        config = _read_json_file(repo_id, commit, "config.json", token=token, endpoint=ep) if "config.json" in names else None
        params = _read_json_file(repo_id, commit, "params.json", token=token, endpoint=ep) if "params.json" in names else None
    return RemoteModel(repo_id, commit, files, gated=gated, config=config, params=params)


# --- safetensors headers ----------------------------------------------------------------------

HEADER_READERS = 8  # shard headers read at once (one or two small Range requests each)
SAFETENSORS_INDEX = "model.safetensors.index.json"

# One tensor as the header describes it: dtype, shape, bytes (its data_offsets span).
TensorEntry = tuple[str, tuple[int, ...], int]


def _header_of(api: Any, repo_id: str, commit: str, filename: str) -> dict[str, TensorEntry]:
    what = f"the safetensors header of {filename} of {repo_id}"

    def ask() -> Any:
        with bounded(what):
            return api.parse_safetensors_file_metadata(repo_id, filename, revision=commit, timeout=current_timeout_s())

    meta = retrying_when_busy(what, ask)
    return {
        name: (str(info.dtype), tuple(int(d) for d in info.shape), int(info.data_offsets[1]) - int(info.data_offsets[0]))
        for name, info in meta.tensors.items()
    }


def safetensors_index(repo_id: str, commit: str, *, token: Secret | None, endpoint: str | None, token_source: str | None = None) -> dict | None:
    """``model.safetensors.index.json`` (read into a temporary folder, so nothing stays on disk)."""
    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    with hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep):
        return _read_json_file(repo_id, commit, SAFETENSORS_INDEX, token=token, endpoint=ep)


def safetensors_headers(
    repo_id: str,
    commit: str,
    filenames: list[str] | tuple[str, ...],
    *,
    token: Secret | None,
    endpoint: str | None = None,
    token_source: str | None = None,
) -> dict[str, dict[str, TensorEntry]]:
    """The headers of these safetensors files of ``repo_id`` at ``commit``, file -> tensor ->
    (dtype, shape, bytes), through the client's public metadata calls: Range requests on the
    first bytes of each file (``bytes=0-100000``, and one more for a longer header), never a body.

    A single ``model.safetensors`` goes through ``get_safetensors_metadata``; shards and other
    names through ``parse_safetensors_file_metadata`` each, several at once (the index is read by
    the caller: ``get_safetensors_metadata`` would leave it in the client's cache, and a dry run
    writes nothing). The client's progress bars stay off meanwhile.
    """
    from concurrent.futures import ThreadPoolExecutor

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    ep = resolve_endpoint(endpoint)
    source = token_source or ("a token" if token else "none")
    wanted = sorted(set(filenames))
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        with hub_errors(repo_id=repo_id, revision=commit, token_source=source, endpoint=ep):
            api = _api(ep, token)
            if wanted == ["model.safetensors"]:
                what = f"the safetensors header of {repo_id}"

                def ask() -> Any:
                    with bounded(what):
                        return api.get_safetensors_metadata(repo_id, revision=commit, timeout=current_timeout_s())

                meta = retrying_when_busy(what, ask).files_metadata["model.safetensors"]
                return {
                    "model.safetensors": {
                        name: (str(i.dtype), tuple(int(d) for d in i.shape), int(i.data_offsets[1]) - int(i.data_offsets[0]))
                        for name, i in meta.tensors.items()
                    }
                }
            with ThreadPoolExecutor(max_workers=min(HEADER_READERS, max(1, len(wanted)))) as pool:
                read = list(pool.map(lambda name: _header_of(api, repo_id, commit, name), wanted))
            return dict(zip(wanted, read))
    finally:
        if not bars_were_off:
            enable_progress_bars()

"""The hub's failures in our terms (one error per cause, carrying the repo id), and a busy hub waited for."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from kaito_runtime.errors import (
    GatedAccessDeniedError,
    GatedRepoNoTokenError,
    HubUnreachableError,
    KaitoError,
    RepoNotFoundError,
    RevisionNotFoundError,
    TokenRejectedError,
    WeightsError,
)
from kaito_runtime.hub.timeouts import TIMEOUT_ENV, current_timeout_s

from kaito_runtime.hub.repo_ids import TOKEN_HINT, shown_endpoint

logger = logging.getLogger("kaito_runtime.hub")
T = TypeVar("T")

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

"""One error hierarchy for the whole launcher.

Every error carries three parts a user needs: *what* went wrong, *why* (the numbers or the
input at fault) and *how to fix* it. The CLI prints them and exits with ``exit_code``.

Exit codes (documented in README.md):
  2      bad input, or the model does not fit (nothing was started)
  10-19  the weights step (one code per cause, so scripts and init containers can branch on it;
         an object store's faults use the hub's code for the same cause, 19 = the store hung)
  20     vLLM is not installed / cannot be started
  the child's own code when vLLM fails, 128+signal when killed
"""

from __future__ import annotations


class KaitoError(Exception):
    """Base of every error the launcher raises on purpose."""

    exit_code: int = 1
    # Context a caller may need without parsing the message (None where it does not apply):
    # the Hugging Face repo and the file or folder at fault.
    repo_id: str | None = None
    path: object | None = None

    def __init__(
        self, what: str, *, why: str | None = None, fix: str | None = None,
        repo_id: str | None = None, path: object | None = None,
    ) -> None:
        self.what = what
        self.why = why
        self.fix = fix
        if repo_id is not None:
            self.repo_id = repo_id
        if path is not None:
            self.path = path
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [_sentence(self.what)]
        if self.why:
            parts.append(_sentence(self.why))
        if self.fix:
            parts.append("Fix: " + _sentence(self.fix))
        return " ".join(parts)


MAX_PART_CHARS = 1000  # what, why and fix each: a message quoting a huge value stays readable


def shortened(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _sentence(text: str) -> str:
    # No capitalisation: parts often start with a name (a preset, a file, a flag) that must stay as is.
    text = shortened(text.strip(), MAX_PART_CHARS)
    return text if text.endswith((".", "?", "!")) else text + "."


def value_kind(value: object) -> str:
    """What a parsed YAML/JSON value is, in words for a message: 'a number', 'a list', ..."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean (true/false)"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    name = type(value).__name__
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


# --- bad input (exit 2) -------------------------------------------------------------------------


class InputError(KaitoError):
    """The user (flags, environment, files) asked for something invalid."""

    exit_code = 2


class CatalogError(InputError):
    """A preset file is malformed or inconsistent: which file, preset and field are at fault."""

    def __init__(
        self,
        what: str,
        *,
        why: str | None = None,
        fix: str | None = None,
        path: object | None = None,
        preset: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(what, why=why, fix=fix)
        self.path = path
        self.preset = preset
        self.field = field


class UnknownPresetError(InputError):
    """No preset has that name."""


class UnknownSkuError(InputError):
    """No GPU SKU / GPU model has that name."""


class TopologyError(InputError):
    """The node's place in its group, read from flags or environment, is invalid."""


class RankOutsideGroupError(TopologyError):
    """This node's rank is not below the group's node count."""

    def __init__(self, what: str, *, rank: int, nnodes: int, why: str | None = None, fix: str | None = None) -> None:
        self.rank = rank
        self.nnodes = nnodes
        super().__init__(what, why=why, fix=fix)


class ConfigFileError(InputError):
    """The KAITO-style config file cannot be read."""


class DoesNotFitError(KaitoError):
    """The model cannot run on this node/group with the requested settings."""

    exit_code = 2


class ModelDoesNotFitError(DoesNotFitError):
    """The fit check's refusal with what is known about the model (``model``, a ModelSpec), so
    that a plan can show it beside the numbers: the planner's message and exit code, the fix
    the API adds, where the token came from (never the token) and the warnings so far."""

    def __init__(
        self,
        error: DoesNotFitError,
        model: object,
        *,
        fix: str | None,
        token_source: str | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        super().__init__(error.what, why=error.why, fix=fix)
        self.model = model
        self.token_source = token_source
        self.warnings = warnings


# --- weights (exit 10-19) -----------------------------------------------------------------------


class WeightsError(KaitoError):
    """Fetching or verifying the model weights failed."""

    exit_code = 10


class GatedRepoNoTokenError(WeightsError):
    exit_code = 11


class TokenRejectedError(WeightsError):
    exit_code = 12


class GatedAccessDeniedError(WeightsError):
    exit_code = 13


class RepoNotFoundError(WeightsError):
    exit_code = 14


class RevisionNotFoundError(WeightsError):
    exit_code = 15


class HubUnreachableError(WeightsError):
    exit_code = 16


class InsufficientDiskError(WeightsError):
    exit_code = 17


class WeightsCorruptError(WeightsError):
    exit_code = 18


class StoreError(WeightsError):
    """An object store (s3://, gs://, az://) cannot give the model: the message names the store,
    the object and the fix. Subclasses share the hub's codes where the cause is the same."""


class StoreCredentialsMissingError(StoreError):
    exit_code = 11


class StoreCredentialsRejectedError(StoreError):
    exit_code = 12


class StoreAccessDeniedError(StoreError):
    exit_code = 13


class StoreNotFoundError(StoreError):
    """No such bucket, container or prefix."""

    exit_code = 14


class StoreUnreachableError(StoreError):
    exit_code = 16


class StoreTruncatedError(StoreError):
    """An object is shorter than its own header says (or than the store listed)."""

    exit_code = 18


class StoreTimeoutError(StoreError):
    """The store accepted the connection and then said nothing for KAITO_STORE_TIMEOUT seconds."""

    exit_code = 19


# --- launching ------------------------------------------------------------------------------------


class VllmNotInstalledError(KaitoError):
    exit_code = 20


class GroupMismatchError(InputError):
    """The nodes of a multi-node group disagree (plan field, version, duplicate rank): exit 2."""


class RendezvousError(KaitoError):
    """The group did not meet (exit 21): the family of everything that can keep the nodes of a
    group from reaching each other. Each member names what was tried and for how long."""

    exit_code = 21


class RendezvousTimeoutError(RendezvousError):
    """A rank never checked in, or the leader's group store never answered, within the
    rendezvous timeout."""


class LeaderNotResolvedError(RendezvousError):
    """The leader's name never resolved to an address within the rendezvous timeout."""


class NoRouteError(RendezvousError):
    """This node has no route (no source address) towards the leader."""


class StorePortTakenError(RendezvousError):
    """The leader cannot listen on the group store's port (the master port + 1).

    In the rendezvous family (it keeps the group from meeting), but exit 2, as the same port found
    taken by the check before anything starts: a port in use is fixed by choosing another
    ``--master-port``, and two leaders racing for one port must not look like a slow group."""

    exit_code = 2


class GroupMemberLostError(KaitoError):
    """A node of a running group was lost (its vLLM exited or its heartbeat went silent)."""

    exit_code = 22


# --- a stop asked for by a signal -----------------------------------------------------------------


# The exit code of a graceful stop, by the signal that asked for it (docs/operations.md, "Signals"):
# SIGTERM is the orchestrator's normal stop, 0; SIGINT is Ctrl-C, 128 + 2 as a shell reports it.
GRACEFUL_STOP_EXIT_CODES = {15: 0, 2: 130}  # signal.SIGTERM, signal.SIGINT


class StopRequested(BaseException):
    """SIGTERM or SIGINT arrived before vLLM runs (while vLLM runs the supervisor forwards it).

    A BaseException, like KeyboardInterrupt, and on purpose not a KaitoError: it is no error, and
    no ``except Exception`` on the way (the hub's error translation) may swallow it. Each step it
    passes may say what it kept in ``kept``. Exit codes as the README's table gives them for a
    graceful stop: 0 after SIGTERM, 130 (128 + 2) after SIGINT.
    """

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.kept: str | None = None

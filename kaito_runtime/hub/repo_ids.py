"""Repo ids, the endpoint and the token as the client takes them: the rules every hub call starts with."""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import TypeVar

from kaito_runtime.errors import InputError
from kaito_runtime.secrets import Secret



logger = logging.getLogger("kaito_runtime.hub")
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

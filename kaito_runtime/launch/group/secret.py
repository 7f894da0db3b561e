"""The group secret: what proves that a message in the group's store comes from a node of the
group, and the key that API keys are compared under.

Every node of a group gets the same secret, from a file (``--group-secret-file`` /
``KAITO_GROUP_SECRET_FILE``: a mounted Kubernetes Secret) or from ``KAITO_GROUP_SECRET`` (a
Secret's ``secretKeyRef``); never from a command line, which any process on the node can read.
Each message a node writes to the store (check-in, heartbeat, published request, verdict, stop
notice) carries an HMAC-SHA256 over its key in the store and its text; a reader drops a message
whose tag does not match. Without a secret the store is open: the launcher says so once, and still
writes no secret there (an API key travels only as a slow, salted hash).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kaito_runtime.errors import InputError
from kaito_runtime.secrets import GROUP_SECRET_ENV as SECRET_ENV, GROUP_SECRET_FILE_ENV as SECRET_FILE_ENV
MIN_BYTES = 16  # below this a secret can be guessed; a Kubernetes-generated one is far longer
_MAX_BYTES = 4096
# The API key's hash without a group secret: scrypt, so that a short key costs a guesser ~50 ms a try.
_SALT = b"kaito-runtime/group/api-key/v1"


@dataclass(frozen=True)
class GroupSecret:
    """The secret's bytes (never shown: not in repr, not in any log) and where they came from."""

    key: bytes = field(repr=False)
    source: str  # "KAITO_GROUP_SECRET" or "file /path" (a name, never the value)

    def tag(self, name: str, text: str) -> str:
        return hmac.new(self.key, f"{name}\n{text}".encode(), hashlib.sha256).hexdigest()

    def matches(self, name: str, text: str, tag: str) -> bool:
        return hmac.compare_digest(self.tag(name, text), tag)


def load_group_secret(file: str | None, env: Mapping[str, str]) -> GroupSecret | None:
    """The group secret from ``--group-secret-file`` (or its twin ``KAITO_GROUP_SECRET_FILE``),
    else ``KAITO_GROUP_SECRET``; None when neither is set. A file wins over the variable.
    Raises InputError naming the source (never the value) when it is unreadable or too short."""
    path = file or env.get(SECRET_FILE_ENV) or None
    if path:
        origin = f"--group-secret-file {path}" if file else f"{SECRET_FILE_ENV}={path}"
        try:
            with open(path, "rb") as handle:
                raw = handle.read(_MAX_BYTES + 1)
        except OSError as exc:
            raise InputError(f"The group secret file {path} cannot be read ({exc.strerror or exc})",
                             why=f"it was named by {origin}",
                             fix="mount the group's Secret there (a file every node of the group gets), or unset it") from None
        return _checked(raw.strip(), f"file {Path(path)}", origin)
    value = env.get(SECRET_ENV)
    if value is None or value == "":
        return None
    return _checked(value.strip().encode(), SECRET_ENV, SECRET_ENV)


def _checked(raw: bytes, source: str, origin: str) -> GroupSecret:
    if len(raw) > _MAX_BYTES:
        raise InputError(f"The group secret from {origin} is longer than {_MAX_BYTES} bytes",
                         fix="use a random string of 32 to 64 characters, the same on every node")
    if len(raw) < MIN_BYTES:
        raise InputError(f"The group secret from {origin} is {len(raw)} bytes, fewer than {MIN_BYTES}",
                         why="a short secret can be guessed by anyone who can reach the group's store",
                         fix="use a random string of 32 or more characters, e.g. `openssl rand -hex 32`, "
                         "the same on every node")
    return GroupSecret(raw, source)


def api_key_digest(api_key: str, secret: GroupSecret | None) -> str:
    """What the store may hold of an API key so that nodes can compare theirs: an HMAC under the
    group secret, or, without one, a salted scrypt hash (slow to guess; still set a secret)."""
    if secret is not None:
        return "hmac:" + hmac.new(secret.key, b"api-key\n" + api_key.encode(), hashlib.sha256).hexdigest()[:32]
    return "scrypt:" + hashlib.scrypt(api_key.encode(), salt=_SALT, n=2**14, r=8, p=1, dklen=16).hex()


__all__ = ["GroupSecret", "MIN_BYTES", "SECRET_ENV", "SECRET_FILE_ENV", "api_key_digest", "load_group_secret"]


"""Model weights in an object store: ``s3://bucket/prefix``, ``gs://bucket/prefix`` and
``az://[account/]container/prefix``, read the way vLLM's Run:ai streamer reads them.

The launcher reads a store for three things, all before vLLM starts: the listing (names, sizes,
versions), small files (config.json, the safetensors index) and ranged reads of each shard's
header (the first bytes only). vLLM then streams the tensors itself (``--load-format
runai_streamer``). ``--download-only`` copies the objects to disk (``weights.objects``).

Clients: boto3 (S3), azure-storage-blob (Azure) and google-cloud-storage (GCS) -- the libraries
the streamer's own ``runai`` extra installs, so the planner needs nothing the streamer does not,
and each signs, retries and reads its store's standard credentials the way the streamer does.

Credentials come only from each store's standard environment (``CREDENTIAL_ENV``) plus KAITO's
SAS-token file; they are registered for redaction, never logged or put in a plan or argv, and
reach vLLM through its environment only. Every request is bounded by ``KAITO_STORE_TIMEOUT``
seconds of silence (default 30); a store that says nothing for that long is a StoreTimeoutError.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from kaito_runtime.errors import InputError

Scheme = Literal["s3", "gs", "az"]
SCHEMES: tuple[str, ...] = ("s3://", "gs://", "az://")
TIMEOUT_ENV = "KAITO_STORE_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
SAS_FILE_ENV = "STREAM_ENV_FILE"  # KAITO's init container writes AZURE_STORAGE_SAS_TOKEN there
DEFAULT_SAS_FILE = "/mnt/streaming/env"

# The variables each store's client reads (names only: their values are secrets or endpoints).
CREDENTIAL_ENV: dict[str, tuple[str, ...]] = {
    "s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
           "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"),
    "gs": ("GOOGLE_APPLICATION_CREDENTIALS", "RUNAI_STREAMER_GCS_CREDENTIAL_FILE"),
    "az": ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_TOKEN", "AZURE_STORAGE_ACCOUNT_KEY",
           "AZURE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE"),
}
# Values that are secrets, whatever they look like: masked in every output.
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AZURE_STORAGE_SAS_TOKEN",
              "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_CLIENT_SECRET")  # a connection string: its key/SAS parts
SETUP_HINT = {
    "s3": "export AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or use an IAM role / AWS_PROFILE); "
          "AWS_ENDPOINT_URL for an S3-compatible store",
    "gs": "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run with workload identity",
    "az": "set AZURE_STORAGE_ACCOUNT_NAME plus AZURE_STORAGE_SAS_TOKEN (KAITO's STREAM_ENV_FILE) or "
          "AZURE_STORAGE_ACCOUNT_KEY, or AZURE_STORAGE_CONNECTION_STRING",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")


@dataclass(frozen=True)
class StoreURI:
    """One model's place in a store. ``account`` is Azure's storage account (None elsewhere)."""

    scheme: Scheme
    bucket: str  # S3/GCS bucket, Azure container
    prefix: str  # the model's folder in it, without slashes at either end ("" = the bucket root)
    account: str | None = None

    @property
    def uri(self) -> str:
        """The form vLLM and the streamer take: ``az://container/prefix`` (the account goes by
        AZURE_STORAGE_ACCOUNT_NAME, as runai-model-streamer-azure reads it)."""
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def shown(self) -> str:
        """The form for messages: with the Azure account when known."""
        if self.scheme == "az" and self.account:
            return f"az://{self.account}/{self.bucket}/{self.prefix}".rstrip("/")
        return self.uri

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def folder_name(self) -> str:
        """A folder name for local copies of this model: readable, and unique per URI."""
        readable = re.sub(r"[^A-Za-z0-9._-]+", "--", f"{self.scheme}--{self.account + '--' if self.account else ''}{self.bucket}--{self.prefix}").strip("-")
        return f"{readable[:80]}--{hashlib.sha256(self.shown.encode()).hexdigest()[:8]}"


def is_store_uri(text: str | None) -> bool:
    return bool(text) and str(text).lower().startswith(SCHEMES)


def parse_uri(text: str, env: Mapping[str, str] | None = None) -> StoreURI:
    """``s3://b/p``, ``gs://b/p``, ``az://container/p`` or ``az://account/container/p``.

    Azure: the streamer takes ``az://container/prefix`` and the account from
    AZURE_STORAGE_ACCOUNT_NAME (KAITO's model mirror writes that form). The three-part form
    ``az://account/container/prefix`` is read as such when its first part is the account that
    AZURE_STORAGE_ACCOUNT_NAME names, or when that variable is unset and no connection string
    names one; vLLM then gets the two-part form and the account by environment.
    """
    env = env or {}
    if "?" in text or "#" in text:
        shown = re.split(r"[?#]", text, maxsplit=1)[0]
        raise InputError(
            f"--model {shown!r} has a query or fragment ('?...' or '#...')",
            why="a SAS token never goes into the URI (it would reach vLLM's argv, the plan, the metrics and the logs)",
            fix=f"drop it and set AZURE_STORAGE_SAS_TOKEN, or KAITO's SAS file ({SAS_FILE_ENV}, default {DEFAULT_SAS_FILE})",
        )
    scheme = text[:2].lower()
    rest = text[5:].strip("/")
    parts = [p for p in rest.split("/") if p]
    problem = None
    if not parts or text[5:6] == "/":
        problem = "it names no bucket"
    elif any(p in (".", "..") for p in parts) or not text.isprintable() or " " in text:
        problem = "it holds '.', '..', spaces or control characters"
    elif not _NAME.match(parts[0]):
        problem = f"{parts[0]!r} is not a bucket/container/account name"
    if problem:
        raise InputError(
            f"--model {text!r} is not an object-store URI",
            why=problem,
            fix="write s3://BUCKET/PREFIX, gs://BUCKET/PREFIX or az://[ACCOUNT/]CONTAINER/PREFIX",
        )
    if scheme == "az":
        named = env.get("AZURE_STORAGE_ACCOUNT_NAME") or connection_string_part(env, "AccountName")
        if len(parts) >= 3 and (parts[0] == named or not named):
            return StoreURI("az", parts[1], "/".join(parts[2:]), account=parts[0])
        return StoreURI("az", parts[0], "/".join(parts[1:]), account=named)
    return StoreURI(scheme, parts[0], "/".join(parts[1:]))  # type: ignore[arg-type]


def connection_string_part(env: Mapping[str, str], name: str) -> str | None:
    for item in (env.get("AZURE_STORAGE_CONNECTION_STRING") or "").split(";"):
        key, _, value = item.partition("=")
        if key.strip().lower() == name.lower() and value:
            return value.strip()
    return None


def timeout_s(env: Mapping[str, str]) -> float:
    from kaito_runtime.numbers import HUB_TIMEOUT
    from kaito_runtime.settings import seconds_from_env

    return seconds_from_env(env, TIMEOUT_ENV, DEFAULT_TIMEOUT_S, HUB_TIMEOUT)  # (0, a day], like the hub's


def sas_from_file(env: Mapping[str, str]) -> str | None:
    """AZURE_STORAGE_SAS_TOKEN from KAITO's env file (``STREAM_ENV_FILE``, default
    /mnt/streaming/env: ``KEY=value`` lines, values optionally quoted), when the variable itself
    is not set. KAITO's wrapper script sources the same file; this reads it for a launcher started
    without the wrapper."""
    path = Path(env.get(SAS_FILE_ENV) or DEFAULT_SAS_FILE)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[7:].strip()
        key, eq, value = line.partition("=")
        if eq and key.strip() == "AZURE_STORAGE_SAS_TOKEN":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            return value or None
    return None


def store_env(uri: StoreURI, env: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """What vLLM's environment needs beyond the launcher's own for the streamer to read ``uri``,
    as (plain variables, secret variables): the Azure account of a three-part URI and the S3
    endpoint under the streamer's own name; the SAS token from KAITO's file. The secret ones are
    never shown (the start line names plain variables only)."""
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    if uri.scheme == "az":
        if uri.account and not env.get("AZURE_STORAGE_ACCOUNT_NAME"):
            plain["AZURE_STORAGE_ACCOUNT_NAME"] = uri.account
        if not env.get("AZURE_STORAGE_SAS_TOKEN"):
            sas = sas_from_file(env)
            if sas:
                secret["AZURE_STORAGE_SAS_TOKEN"] = sas
    if uri.scheme == "s3":
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if endpoint and not env.get("RUNAI_STREAMER_S3_ENDPOINT"):
            plain["RUNAI_STREAMER_S3_ENDPOINT"] = endpoint
    if uri.scheme == "gs":
        # google-cloud-storage (vLLM's pull of the non-tensor files) reads STORAGE_EMULATOR_HOST;
        # the streamer's C++ client (google-cloud-cpp) reads CLOUD_STORAGE_EMULATOR_ENDPOINT.
        emulator = env.get("STORAGE_EMULATOR_HOST") or env.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")
        if emulator:
            for name in ("STORAGE_EMULATOR_HOST", "CLOUD_STORAGE_EMULATOR_ENDPOINT"):
                if not env.get(name):
                    plain[name] = emulator
            # An emulator takes no credentials; the streamer's Python part otherwise demands ADC.
            if not env.get("RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS"):
                plain["RUNAI_STREAMER_GCS_USE_ANONYMOUS_CREDENTIALS"] = "true"
    return plain, secret


def secret_values(env: Mapping[str, str]) -> list[str]:
    """The credential values in ``env`` (to register for redaction)."""
    found = [env[k] for k in SECRET_ENV if env.get(k)]
    sas = sas_from_file(env)
    if sas:
        found.append(sas)
    key = connection_string_part(env, "AccountKey")
    if key:
        found.append(key)
    in_connection_string = connection_string_part(env, "SharedAccessSignature")
    if in_connection_string:
        found.append(in_connection_string)
    for token in (env.get("AZURE_STORAGE_SAS_TOKEN"), sas, in_connection_string):
        found += _sas_parts(token)
    return found


def _sas_parts(token: str | None) -> list[str]:
    """A client may log the request URL with the signature cut out, and re-encodes the query it
    sends: the rest of the token (expiry, permissions, resource) is masked on its own, and so is
    the signature, decoded too, so that its every encoding is masked (a '/' the token carries
    as is goes out as %2F, which would leave the pieces between the slashes readable)."""
    if not token or "sig=" not in token:
        return []
    rest, _, tail = token.lstrip("?").partition("sig=")
    signature = tail.partition("&")[0]
    return [part for part in (rest.rstrip("&"), signature, urllib.parse.unquote(signature)) if part]


@dataclass(frozen=True)
class StoreObject:
    name: str  # relative to the model's prefix
    size: int
    version: str  # ETag (S3, Azure) or generation (GCS): changes whenever the bytes change


class Store(Protocol):
    """What the launcher asks of a store. Every method raises the StoreError family."""

    uri: StoreURI

    def list(self) -> list[StoreObject]: ...

    def read(self, name: str, start: int = 0, length: int | None = None) -> bytes: ...

    def stream(self, name: str, start: int = 0) -> Iterator[bytes]: ...


def open_store(uri: StoreURI, env: Mapping[str, str]) -> Store:
    """A client for ``uri`` configured from ``env`` (credentials, endpoint, timeout)."""
    from kaito_runtime.objstore import clients

    return clients.open_store(uri, dict(env), timeout_s(env))


def version_digest(objects: list[StoreObject] | tuple[StoreObject, ...]) -> str:
    """One short value for the exact bytes of a model in a store: every object's name, size and
    version. Two nodes with the same digest read the same copy."""
    h = hashlib.sha256()
    for o in sorted(objects, key=lambda o: o.name):
        h.update(f"{o.name}\0{o.size}\0{o.version}\n".encode())
    return h.hexdigest()[:16]


def assets_folder(assets_cache: str, uri: StoreURI) -> Path:
    """Where vLLM puts a streamed model's non-tensor files: ``$VLLM_ASSETS_CACHE/model_streamer/``
    + the first 8 hex digits of sha256 of the --model string (vllm/transformers_utils/runai_utils.py)."""
    return Path(assets_cache) / "model_streamer" / hashlib.sha256(uri.uri.encode()).hexdigest()[:8]


# --- what the API asks of a store's model ---------------------------------------------------------


def register_secrets(env: Mapping[str, str]) -> None:
    """Object-store credentials in ``env`` are masked in every output from here on."""
    from kaito_runtime import secrets

    for value in secret_values(env):
        secrets.register_secret(value)


def vllm_model_uri(store_uri: str | None, env: Mapping[str, str]) -> str | None:
    """The URI vLLM streams a store's model from (None for a hub model or a folder)."""
    return parse_uri(store_uri, env).uri if store_uri else None


def child_env(store_uri: str | None, env: Mapping[str, str], assets: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(plain, secret) variables vLLM needs to stream the model at ``store_uri`` (nothing for
    other models); ``assets``: the folder the weights step put the non-tensor files in."""
    if not store_uri:
        return {}, {}
    plain, secret = store_env(parse_uri(store_uri, env), env)
    if not env.get("VLLM_ASSETS_CACHE"):  # where the weights step put the non-tensor files
        plain["VLLM_ASSETS_CACHE"] = str(Path(assets).parent.parent)
    return plain, secret

"""One small client per store, each over its store's own library, and the translation of every
library failure into the StoreError family (one line: the store, the object, the fix).

The libraries are imported when a store is opened: a launcher serving from the hub never loads them.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from kaito_runtime.errors import (
    StoreAccessDeniedError,
    StoreCredentialsMissingError,
    StoreCredentialsRejectedError,
    StoreError,
    StoreNotFoundError,
    StoreTimeoutError,
    StoreUnreachableError,
)
from kaito_runtime.objstore import SETUP_HINT, TIMEOUT_ENV, Store, StoreObject, StoreURI, connection_string_part

T = TypeVar("T")
CHUNK = 8 * 1024 * 1024

_STORE = {"s3": "S3", "gs": "GCS", "az": "Azure Blob"}
# Where each store's endpoint comes from (named in the "cannot be reached" fix).
_ENDPOINT_FROM = {
    "s3": "AWS_ENDPOINT_URL",
    "gs": "STORAGE_EMULATOR_HOST",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ENDPOINT_SUFFIX, or the connection string's BlobEndpoint",
}


def open_store(uri: StoreURI, env: dict[str, str], timeout_s: float) -> Store:
    if uri.scheme == "s3":
        return S3Store(uri, env, timeout_s)
    if uri.scheme == "gs":
        return GcsStore(uri, env, timeout_s)
    return AzureStore(uri, env, timeout_s)


def _missing_library(uri: StoreURI, exc: ImportError) -> StoreError:
    return StoreError(
        f"Cannot read {uri.shown}: the {_STORE[uri.scheme]} client library is not installed ({exc.name})",
        fix="install vLLM's runai extra: pip install 'runai-model-streamer[s3,gcs,azure]' (scripts/setup.sh does)",
    )


def _endpoint_text(endpoint: str | None) -> str:
    return f" at {endpoint}" if endpoint else ""


class _Faults:
    """The messages every store shares; the store-specific code picks which one applies."""

    def __init__(self, uri: StoreURI, endpoint: str | None, timeout_s: float) -> None:
        self.uri, self.endpoint, self.timeout_s = uri, endpoint, timeout_s
        self.store = _STORE[uri.scheme] + _endpoint_text(endpoint)

    def where(self, name: str | None) -> str:
        return f"{self.uri.shown}/{name}" if name else self.uri.shown

    def not_found(self, name: str | None, what: str) -> StoreError:
        return StoreNotFoundError(
            f"{self.where(name)} not found in {self.store}: {what}",
            fix="check the bucket/container and prefix in --model (the folder that holds config.json)",
        )

    def no_credentials(self, why: str) -> StoreError:
        return StoreCredentialsMissingError(
            f"No credentials for {self.uri.shown} in {self.store}", why=why, fix=SETUP_HINT[self.uri.scheme]
        )

    def rejected(self, name: str | None, code: str) -> StoreError:
        return StoreCredentialsRejectedError(
            f"{self.store} rejected the credentials for {self.where(name)} ({code})",
            fix="check the key pair / SAS token / key file (a SAS token may have expired); " + SETUP_HINT[self.uri.scheme],
        )

    def denied(self, name: str | None, code: str) -> StoreError:
        return StoreAccessDeniedError(
            f"{self.store} denied access to {self.where(name)} ({code})",
            fix="grant the identity read and list access to the bucket/container (s3:GetObject and s3:ListBucket, "
            "Storage Blob Data Reader, roles/storage.objectViewer)",
        )

    def down(self, name: str | None, why: str) -> StoreError:
        return StoreUnreachableError(
            f"{self.store} cannot be reached for {self.where(name)}",
            why=why,
            fix=f"check the endpoint ({_ENDPOINT_FROM[self.uri.scheme]}), the network and the store's status; "
            "the launcher exits before vLLM starts",
        )

    def truncated(self, name: str | None, why: str) -> StoreError:
        from kaito_runtime.errors import StoreTruncatedError

        return StoreTruncatedError(
            f"{self.where(name)} in {self.store} ended early", why=why,
            fix="retry; if it persists, upload the object again or check proxies between this node and the store",
        )

    def hung(self, name: str | None) -> StoreError:
        return StoreTimeoutError(
            f"{self.store} said nothing for {self.timeout_s:g} s while reading {self.where(name)}",
            fix=f"check the store's health and the network, or raise {TIMEOUT_ENV} (seconds of silence allowed)",
        )


def _is_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name = type(exc).__name__
        if isinstance(exc, (socket.timeout, TimeoutError)) or "Timeout" in name:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


# --- S3 -------------------------------------------------------------------------------------------


class S3Store:
    """boto3 (botocore): SigV4, the AWS credential chain, AWS_ENDPOINT_URL / RUNAI_STREAMER_S3_ENDPOINT."""

    def __init__(self, uri: StoreURI, env: dict[str, str], timeout_s: float) -> None:
        try:
            import boto3
            from botocore import UNSIGNED
            from botocore.config import Config
        except ImportError as exc:
            raise _missing_library(uri, exc) from None
        self.uri = uri
        endpoint = env.get("RUNAI_STREAMER_S3_ENDPOINT") or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        self.faults = _Faults(uri, endpoint, timeout_s)
        session = boto3.session.Session(
            aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=env.get("AWS_SESSION_TOKEN"),
            region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            profile_name=env.get("AWS_PROFILE") or None,
        )
        unsigned = env.get("RUNAI_STREAMER_S3_UNSIGNED") == "1"
        if not unsigned and session.get_credentials() is None:
            raise self.faults.no_credentials("The AWS credential chain found none (environment, profile, role)")
        config = Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 2, "mode": "standard"},
            signature_version=UNSIGNED if unsigned else None,
            s3={"addressing_style": "path"} if endpoint else None,
        )
        self.client = session.client("s3", endpoint_url=endpoint, config=config)

    @contextmanager
    def _errors(self, name: str | None) -> Iterator[None]:
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            IncompleteReadError,
            NoCredentialsError,
            ResponseStreamingError,
        )

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket", "NoSuchKey", "404", "NotFound"):
                raise self.faults.not_found(name, f"{code}: no such bucket" if code == "NoSuchBucket" else f"{code}: no such object") from None
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "TokenRefreshRequired"):
                raise self.faults.rejected(name, code) from None
            if code in ("AccessDenied", "403", "AllAccessDisabled") or status == 403:
                raise self.faults.denied(name, code or "403") from None
            raise self.faults.down(name, f"{code or status}: {err.get('Message') or exc}") from None
        except NoCredentialsError:
            raise self.faults.no_credentials("The AWS credential chain found none") from None
        except (IncompleteReadError, ResponseStreamingError) as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            raise self.faults.truncated(name, f"fewer bytes arrived than the store announced ({type(exc).__name__})") from None
        except EndpointConnectionError as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            raise self.faults.down(name, str(exc)) from None
        except Exception as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            if type(exc).__module__.startswith(("botocore", "urllib3")):
                raise self.faults.down(name, f"{type(exc).__name__}: {exc}") from None
            raise

    def list(self) -> list[StoreObject]:
        base = self.uri.key("")
        found: list[StoreObject] = []
        with self._errors(None):
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.uri.bucket, Prefix=base)
            for page in pages:
                for item in page.get("Contents", []):
                    name = item["Key"][len(base):]
                    if name and not name.endswith("/"):
                        found.append(StoreObject(name, int(item["Size"]), str(item.get("ETag", "")).strip('"')))
        return found

    def read(self, name: str, start: int = 0, length: int | None = None) -> bytes:
        kwargs: dict[str, Any] = {"Bucket": self.uri.bucket, "Key": self.uri.key(name)}
        if start or length is not None:
            kwargs["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        with self._errors(name):
            return self.client.get_object(**kwargs)["Body"].read()

    def stream(self, name: str, start: int = 0) -> Iterator[bytes]:
        kwargs: dict[str, Any] = {"Bucket": self.uri.bucket, "Key": self.uri.key(name)}
        if start:
            kwargs["Range"] = f"bytes={start}-"
        with self._errors(name):
            body = self.client.get_object(**kwargs)["Body"]
            yield from body.iter_chunks(CHUNK)


# --- Azure Blob -------------------------------------------------------------------------------------


class AzureStore:
    """azure-storage-blob: a connection string (its BlobEndpoint, e.g. Azurite's) or
    https://ACCOUNT.SUFFIX (AZURE_STORAGE_ENDPOINT_SUFFIX, default blob.core.windows.net), with a
    SAS token, an account key or DefaultAzureCredential (workload identity) -- the order
    runai-model-streamer-azure uses."""

    def __init__(self, uri: StoreURI, env: dict[str, str], timeout_s: float) -> None:
        try:
            from azure.storage.blob import BlobServiceClient
        except ImportError as exc:
            raise _missing_library(uri, exc) from None
        from kaito_runtime.objstore import sas_from_file

        import logging

        # azure-core logs every request's URL and headers at INFO: a SAS query string among them.
        logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)
        self.uri = uri
        conn = env.get("AZURE_STORAGE_CONNECTION_STRING")
        account = uri.account or env.get("AZURE_STORAGE_ACCOUNT_NAME") or connection_string_part(env, "AccountName")
        endpoint = connection_string_part(env, "BlobEndpoint") if conn else None
        if not endpoint:
            if not account:
                raise _Faults(uri, None, timeout_s).no_credentials(
                    "no storage account: AZURE_STORAGE_ACCOUNT_NAME is unset and the URI has the form az://CONTAINER/PREFIX"
                )
            # The streamer's meaning (its C++ and Python clients): the suffix replaces
            # `blob.core.windows.net` whole, so the plan reads the host vLLM will read.
            endpoint = f"https://{account}.{env.get('AZURE_STORAGE_ENDPOINT_SUFFIX') or 'blob.core.windows.net'}"
        self.faults = _Faults(uri, endpoint, timeout_s)
        sas = env.get("AZURE_STORAGE_SAS_TOKEN") or sas_from_file(env) or connection_string_part(env, "SharedAccessSignature")
        key = env.get("AZURE_STORAGE_ACCOUNT_KEY")
        options = {"connection_timeout": timeout_s, "read_timeout": timeout_s, "retry_total": 1}
        if conn and not sas and not key:
            service = BlobServiceClient.from_connection_string(conn, **options)
        elif sas:
            service = BlobServiceClient(account_url=endpoint, credential=sas.lstrip("?"), **options)
        elif key:
            service = BlobServiceClient(account_url=endpoint, credential={"account_name": account, "account_key": key}, **options)
        else:
            try:
                from azure.identity import DefaultAzureCredential
            except ImportError as exc:
                raise _missing_library(uri, exc) from None
            service = BlobServiceClient(account_url=endpoint, credential=DefaultAzureCredential(), **options)
        self.container = service.get_container_client(uri.bucket)

    @contextmanager
    def _errors(self, name: str | None) -> Iterator[None]:
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            IncompleteReadError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        try:
            yield
        except ResourceNotFoundError as exc:
            code = getattr(exc, "error_code", None) or "404"
            code = getattr(code, "value", code)
            raise self.faults.not_found(name, f"{code}") from None
        except ClientAuthenticationError as exc:
            code = getattr(exc, "error_code", None) or "401/403"
            code = getattr(code, "value", code)
            if str(code) in ("AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch"):
                raise self.faults.denied(name, str(code)) from None
            if "credential" in type(exc).__name__.lower() or "Credential" in str(exc)[:200] and getattr(exc, "status_code", None) is None:
                raise self.faults.no_credentials(str(exc).splitlines()[0][:200]) from None
            raise self.faults.rejected(name, str(code)) from None
        except IncompleteReadError:
            raise self.faults.truncated(name, "fewer bytes arrived than the store announced") from None
        except (ServiceRequestError, ServiceResponseError) as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            raise self.faults.down(name, str(exc).splitlines()[0][:200]) from None
        except HttpResponseError as exc:
            if getattr(exc, "status_code", None) == 403:
                code = str(getattr(getattr(exc, "error_code", None), "value", getattr(exc, "error_code", None)) or "403")
                if code in ("AuthorizationPermissionMismatch", "AuthorizationResourceTypeMismatch"):  # no right to this
                    raise self.faults.denied(name, code) from None
                raise self.faults.rejected(name, code) from None
            raise self.faults.down(name, f"{getattr(exc, 'status_code', '')} {getattr(exc, 'error_code', '')}") from None
        except Exception as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            if "CredentialUnavailable" in type(exc).__name__:
                raise self.faults.no_credentials("DefaultAzureCredential found no identity") from None
            raise

    def list(self) -> list[StoreObject]:
        base = self.uri.key("")
        with self._errors(None):
            return [
                StoreObject(b.name[len(base):], int(b.size), str(b.etag).strip('"'))
                for b in self.container.list_blobs(name_starts_with=base)
                if b.name[len(base):] and not b.name.endswith("/")
            ]

    def read(self, name: str, start: int = 0, length: int | None = None) -> bytes:
        with self._errors(name):
            offset = start if (start or length is not None) else None
            return self.container.download_blob(self.uri.key(name), offset=offset, length=length).readall()

    def stream(self, name: str, start: int = 0) -> Iterator[bytes]:
        with self._errors(name):
            downloader = self.container.download_blob(self.uri.key(name), offset=start or None)
            yield from downloader.chunks()


# --- Google Cloud Storage ---------------------------------------------------------------------------


class GcsStore:
    """google-cloud-storage: Application Default Credentials, or anonymous against
    STORAGE_EMULATOR_HOST (an emulator)."""

    def __init__(self, uri: StoreURI, env: dict[str, str], timeout_s: float) -> None:
        try:
            from google.cloud import storage
        except ImportError as exc:
            raise _missing_library(uri, exc) from None
        self.uri = uri
        self.timeout_s = timeout_s
        emulator = env.get("STORAGE_EMULATOR_HOST") or env.get("CLOUD_STORAGE_EMULATOR_ENDPOINT")
        self.faults = _Faults(uri, emulator, timeout_s)
        project = env.get("GOOGLE_CLOUD_PROJECT") or "kaito-runtime"
        if emulator:
            from google.auth.credentials import AnonymousCredentials

            self.client = storage.Client(project=project, credentials=AnonymousCredentials(),
                                         client_options={"api_endpoint": emulator})
        else:
            key_file = env.get("RUNAI_STREAMER_GCS_CREDENTIAL_FILE") or env.get("GOOGLE_APPLICATION_CREDENTIALS")
            with self._errors(None):
                if key_file:
                    self.client = storage.Client.from_service_account_json(key_file, project=project)
                else:
                    self.client = storage.Client(project=project)
        self.bucket = self.client.bucket(uri.bucket)

    @contextmanager
    def _errors(self, name: str | None) -> Iterator[None]:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        try:
            yield
        except gexc.NotFound as exc:
            raise self.faults.not_found(name, str(exc.message)[:120]) from None
        except gexc.Unauthorized as exc:
            raise self.faults.rejected(name, "401") from None
        except gexc.Forbidden:
            raise self.faults.denied(name, "403") from None
        except auth_exc.DefaultCredentialsError as exc:
            raise self.faults.no_credentials(str(exc).splitlines()[0][:200]) from None
        except (auth_exc.RefreshError, auth_exc.TransportError) as exc:
            raise self.faults.rejected(name, type(exc).__name__) from None
        except gexc.GoogleAPICallError as exc:
            raise self.faults.down(name, f"{getattr(exc, 'code', '')} {exc.message}"[:200]) from None
        except Exception as exc:
            if _is_timeout(exc):
                raise self.faults.hung(name) from None
            if type(exc).__module__.startswith(("requests", "urllib3", "google")) or isinstance(exc, ConnectionError):
                raise self.faults.down(name, f"{type(exc).__name__}: {str(exc)[:160]}") from None
            raise

    def list(self) -> list[StoreObject]:
        base = self.uri.key("")
        with self._errors(None):
            return [
                StoreObject(b.name[len(base):], int(b.size), str(b.generation))
                for b in self.client.list_blobs(self.bucket, prefix=base, timeout=self.timeout_s)
                if b.name[len(base):] and not b.name.endswith("/")
            ]

    def read(self, name: str, start: int = 0, length: int | None = None) -> bytes:
        with self._errors(name):
            end = None if length is None else start + length - 1
            return self.bucket.blob(self.uri.key(name)).download_as_bytes(start=start, end=end, timeout=self.timeout_s, checksum=None)

    def stream(self, name: str, start: int = 0) -> Iterator[bytes]:
        blob_name = self.uri.key(name)
        size = None
        with self._errors(name):
            blob = self.bucket.get_blob(blob_name, timeout=self.timeout_s)
            if blob is None:
                raise self.faults.not_found(name, "no such object")
            size = int(blob.size)
        at = start
        while at < size:
            yield self.read(name, at, min(CHUNK, size - at))
            at += CHUNK

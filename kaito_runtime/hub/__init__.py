"""Metadata from the Hugging Face Hub, and the translation of its errors into ours.

Every call goes through the ``huggingface_hub`` client with an explicit ``endpoint`` (the client
reads ``HF_ENDPOINT`` only once, at import). Tokens travel as ``Secret`` and are revealed only at
the call into the client. The client is imported lazily (start-up stays fast, and this module
imports under any client version).

Every call is bounded by ``hub_timeouts`` (``KAITO_HUB_TIMEOUT`` seconds of silence, not of
total time); a silent Hub ends in HubUnreachableError. Files sent through Xet are the exception
(see ``download_whole``).

  repo_ids  the repo id rule, the endpoint, the token as the client takes it
  failures  the client's exceptions as our errors (carrying the repo id); a busy hub waited for
  client    the commit a ref names, a repo's files, access, downloads
  metadata  what planning reads: config.json, sizes, gated flag, safetensors headers
  timeouts  every call bounded by seconds of silence
"""

from __future__ import annotations

from kaito_runtime.hub.repo_ids import (
    DEFAULT_ENDPOINT,
    RECEIVE_CHUNK_BYTES,
    REPO_ID_FORM,
    REPO_ID_MAX_PART,
    TOKEN_HINT,
    check_repo_id,
    client_token,
    repo_id_problem,
    resolve_endpoint,
    shown_endpoint,
)
from kaito_runtime.hub.failures import (
    BUSY_FIRST_WAIT_S,
    BUSY_RETRIES,
    BUSY_STATUSES,
    hub_errors,
    retrying_when_busy,
    translate_error,
    unexpected_answer,
)
from kaito_runtime.hub.client import (
    download_range,
    download_whole,
    http_download_limit,
    list_files,
    probe_access,
    receive_in_small_chunks,
    resolve_revision,
)
from kaito_runtime.hub.metadata import (
    HEADER_READERS,
    SAFETENSORS_INDEX,
    TensorEntry,
    fetch_model_metadata,
    safetensors_headers,
    safetensors_index,
)
from kaito_runtime.types import COMMIT_RE, RemoteFile, RemoteModel

__all__ = [
    'BUSY_FIRST_WAIT_S',
    'BUSY_RETRIES',
    'BUSY_STATUSES',
    'DEFAULT_ENDPOINT',
    'HEADER_READERS',
    'RECEIVE_CHUNK_BYTES',
    'REPO_ID_FORM',
    'REPO_ID_MAX_PART',
    'SAFETENSORS_INDEX',
    'TOKEN_HINT',
    'TensorEntry',
    'check_repo_id',
    'client_token',
    'download_range',
    'download_whole',
    'fetch_model_metadata',
    'http_download_limit',
    'hub_errors',
    'list_files',
    'probe_access',
    'receive_in_small_chunks',
    'repo_id_problem',
    'resolve_endpoint',
    'resolve_revision',
    'retrying_when_busy',
    'safetensors_headers',
    'safetensors_index',
    'shown_endpoint',
    'translate_error',
    'unexpected_answer',
    'COMMIT_RE',
    'RemoteFile',
    'RemoteModel']

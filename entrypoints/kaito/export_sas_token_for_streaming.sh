#!/bin/sh
# KAITO's /workspace/vllm/export_sas_token_for_streaming.sh: a command prefix for streaming
# weights from Azure Blob storage (runai streamer, --model=az://...):
#
#   /workspace/vllm/export_sas_token_for_streaming.sh python3 /workspace/vllm/inference_api.py ...
#
# It reads STREAM_ENV_FILE (default /mnt/streaming/env, written by KAITO's SAS-fetch init
# container), exports the variables it sets (AZURE_STORAGE_SAS_TOKEN and the like), then execs the
# command. The token is a secret: it is never printed, never traced (no `set -x`), and never put
# in an argv: it reaches the command only through the environment. With no such file (workload
# identity uses AZURE_STORAGE_ACCOUNT_NAME instead) it says so in one line and runs the command.
set -eu

me=export_sas_token_for_streaming.sh
if [ $# -eq 0 ]; then
    echo "$me: error: no command to run; usage: $me COMMAND [ARGS...]" >&2
    exit 2
fi
env_file=${STREAM_ENV_FILE:-/mnt/streaming/env}
if [ -f "$env_file" ]; then
    if [ ! -r "$env_file" ]; then
        echo "$me: error: $env_file is not readable by uid $(id -u); mount it readable for the serving user" >&2
        exit 1
    fi
    set +x
    set -a
    # shellcheck disable=SC1090 # KAITO's init container writes this file; sourcing it is KAITO's contract
    . "$env_file"
    set +a
    if [ -n "${AZURE_STORAGE_SAS_TOKEN:-}" ]; then
        echo "$me: AZURE_STORAGE_SAS_TOKEN set from $env_file (value not shown)" >&2
    else
        echo "$me: $env_file sets no AZURE_STORAGE_SAS_TOKEN" >&2
    fi
else
    echo "$me: no $env_file: running without a SAS token (workload identity or public data)" >&2
fi
exec "$@"

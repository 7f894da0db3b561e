#!/bin/sh
# Container entrypoint, KAITO-compatible.
#
# - KAITO mounts its inference config at /mnt/config/inference_config.yaml: use it when present
#   (its 'vllm:' flags win over the plan), unless KAITO_CONFIG_FILE says otherwise.
# - KAITO sets HF_TOKEN from the workspace's access secret; a secret mounted as a file can be named
#   with KAITO_HF_TOKEN_FILE instead. Neither is ever put on a command line.
# - POD_INDEX / LWS_* / torchrun variables place this pod in a multi-node group (kaito-run reads them).
# - `exec` keeps kaito-run as the process that receives SIGTERM from the kubelet.
set -eu

KAITO_DEFAULT_CONFIG=/mnt/config/inference_config.yaml
if [ -z "${KAITO_CONFIG_FILE:-}" ] && [ -f "$KAITO_DEFAULT_CONFIG" ]; then
    KAITO_CONFIG_FILE=$KAITO_DEFAULT_CONFIG
    export KAITO_CONFIG_FILE
fi

# An image whose default user is root (for KAITO's CUDA-toolkit init container) serves as
# KAITO_RUN_AS_UID all the same.
if [ "$(id -u)" = 0 ] && [ -n "${KAITO_RUN_AS_UID:-}" ]; then
    exec setpriv --reuid="$KAITO_RUN_AS_UID" --regid="${KAITO_RUN_AS_GID:-$KAITO_RUN_AS_UID}" --clear-groups -- kaito-run "$@"
fi
exec kaito-run "$@"

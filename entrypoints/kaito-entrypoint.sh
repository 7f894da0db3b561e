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

exec kaito-run "$@"

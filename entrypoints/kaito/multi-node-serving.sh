#!/bin/sh
# KAITO's /workspace/vllm/multi-node-serving.sh, without Ray.
#
#   multi-node-serving.sh leader --ray_cluster_size=N --ray_port=6379
#       KAITO runs this before inference_api.py on POD_INDEX 0 to start a Ray head and wait for
#       the Ray workers. There is no Ray cluster here: it exits 0 at once, and inference_api.py
#       (kaito-run) meets the workers itself when it starts.
#   multi-node-serving.sh worker --ray_address=<leader DNS> --ray_port=6379
#       Becomes a kaito-run worker of the group led by <leader DNS>: `exec kaito-run
#       --leader-address <leader DNS>`, so the kubelet's SIGTERM reaches kaito-run. Its rank comes
#       from POD_INDEX. KAITO gives a worker no model flags: it learns the model, revision, node
#       count and settings from the leader (`kaito-run --join`), unless the pod's environment
#       names them (KAITO_PRESET or KAITO_MODEL, KAITO_NNODES; see docs/container.md).
# The Ray port is not used (kaito-run's rendezvous port is --master-port, default 29501).
set -eu

me=multi-node-serving.sh
role=${1:-}
[ $# -gt 0 ] && shift

case "$role" in
leader)
    echo "$me: leader: no Ray head to start; kaito-run meets the group when inference_api.py starts" >&2
    exit 0
    ;;
worker)
    address=""
    while [ $# -gt 0 ]; do
        case "$1" in
        --ray_address=*) address=${1#*=} ;;
        --ray_address) shift; address=${1:-} ;;
        --ray_port=* | --ray_cluster_size=*) echo "$me: ignoring $1 (no Ray)" >&2 ;;
        --ray_port | --ray_cluster_size) echo "$me: ignoring $1 ${2:-} (no Ray)" >&2; [ $# -gt 0 ] && shift ;;
        *) echo "$me: ignoring unknown argument $1" >&2 ;;
        esac
        [ $# -gt 0 ] && shift
    done
    if [ -z "$address" ]; then
        echo "$me: error: worker needs --ray_address=<leader address>" >&2
        exit 2
    fi
    echo "$me: worker of the group led by $address (rank from POD_INDEX=${POD_INDEX:-unset})" >&2
    here=$(dirname "$0")
    py=${KAITO_PYTHON:-python3}
    if [ -z "${KAITO_PRESET:-}" ] && [ -z "${KAITO_MODEL:-}" ]; then
        # What KAITO gives a worker: no model flags. It learns the model, revision, node count and
        # settings from the leader's launcher (kaito-run --join), then fetches, checks in, runs.
        if [ "$(id -u)" = 0 ] && [ -n "${KAITO_RUN_AS_UID:-}" ]; then  # serve non-root (docs/container.md)
            exec setpriv --reuid="$KAITO_RUN_AS_UID" --regid="${KAITO_RUN_AS_GID:-$KAITO_RUN_AS_UID}" --clear-groups -- \
                "$py" -m kaito_runtime.cli --join --leader-address="$address"
        fi
        exec "$py" -m kaito_runtime.cli --join --leader-address="$address"
    fi
    # inference_api.py's own mapping (adapters folder, KAITO_* environment) applies to workers too.
    exec "$py" "$here/inference_api.py" --leader-address="$address"
    ;;
*)
    echo "usage: $me leader [--ray_cluster_size=N --ray_port=P] | worker --ray_address=ADDR [--ray_port=P]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# podman with this project's image store and settings (scripts/containers/env.sh), e.g.
#   scripts/podman.sh images
#   scripts/podman.sh run --rm --network host localhost/kaito-runtime:cpu --preset tiny-llama
set -euo pipefail
# shellcheck source=containers/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/containers/env.sh"
exec podman "${KAITO_STORAGE_FLAGS[@]}" "$@"

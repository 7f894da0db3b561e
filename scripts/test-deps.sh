#!/usr/bin/env bash
# Installs the system tools that the test suite starts (container runtime, test servers) from
# Debian's packages. Run by .ci/run as root before the README's test command; on a developer's
# machine it is optional: a test whose tool is missing skips with a reason, except under CI
# (CI=true), where a missing tool fails the run.
set -euo pipefail

want=()
# need PACKAGE COMMAND: install PACKAGE when COMMAND is not on PATH.
need() { command -v "$2" >/dev/null 2>&1 || want+=("$1"); }

# One line per tool, e.g. `need podman podman` (keep them sorted).
need buildah buildah  # tests/e2e/test_container.py: builds the image (scripts/build-image.sh)
need ca-certificates update-ca-certificates  # tests/e2e/test_object_stores.py: the system bundle a test CA is added to (in a private namespace only)
need debootstrap debootstrap  # scripts/build-image.sh: the Debian base where no registry answers
need iproute2 ip  # tests/e2e/test_multi_node.py: two network namespaces and a veth pair
need mount mount  # tests/e2e/test_object_stores.py: bind mounts inside a private mount namespace
need podman podman  # tests/e2e/test_container.py: runs the image
need nodejs node  # runs azurite (below)
need npm npm  # installs azurite (below)
need prometheus prometheus  # tests/observe/test_prometheus_e2e.py scrapes the launcher with it
need runc runc  # podman's runtime here (scripts/containers/containers.conf)
need util-linux setpriv  # tests/repo/test_kaito_scripts.py: a non-root user
need util-linux unshare  # tests/e2e/test_kaito.py, test_benchmark_probe.py: the probe's own PID namespace; test_object_stores.py: a private mount namespace

if ((${#want[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "test-deps: missing ${want[*]}; run this script as root (or install them) to run every test" >&2
    else
        echo "test-deps: installing ${want[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${want[@]}"
    fi
fi

# Azurite, the Azure Blob emulator (tests/objstore, tests/e2e/test_object_stores.py), is not in
# Debian: npm installs this exact version into the project's cache folder, where
# tests/support/object_stores.py (AZURITE) looks for it.
AZURITE_VERSION=3.37.0
tools="$(cd "$(dirname "$0")/.." && pwd)/.cache/test-tools"
have=$(node -p "require('$tools/node_modules/azurite/package.json').version" 2>/dev/null || true)
if [[ $have == "$AZURITE_VERSION" ]]; then
    :
elif ! command -v npm >/dev/null 2>&1; then
    echo "test-deps: npm is missing, so azurite $AZURITE_VERSION is not installed; run this script as root" >&2
else
    echo "test-deps: installing azurite $AZURITE_VERSION into $tools"
    mkdir -p "$tools"
    npm install --prefix "$tools" --save-exact --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION"
fi

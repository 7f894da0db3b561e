# Sourced by scripts/build-image.sh and scripts/podman.sh: one place that says where this
# project's images live and how podman/buildah run them. Everything can be overridden.
#   KAITO_IMAGE_STORE   image storage: default /var/lib/kaito-runtime/containers as root,
#                       ~/.local/share/kaito-runtime/containers otherwise
#   KAITO_IMAGE_DRIVER  overlay or vfs (default: overlay when root and the kernel has it)
#   KAITO_IMAGE_CACHE   build state (the Debian base's stamp, build logs): default <store>/../image-cache
_kaito_containers_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ $(id -u) == 0 ]]; then
    : "${KAITO_IMAGE_STORE:=/var/lib/kaito-runtime/containers}"
else
    : "${KAITO_IMAGE_STORE:=${XDG_DATA_HOME:-$HOME/.local/share}/kaito-runtime/containers}"
fi
: "${KAITO_IMAGE_CACHE:=$(dirname "$KAITO_IMAGE_STORE")/image-cache}"
: "${CONTAINERS_CONF:=$_kaito_containers_dir/containers.conf}"
export KAITO_IMAGE_STORE KAITO_IMAGE_CACHE CONTAINERS_CONF
# The storage driver (KAITO_IMAGE_DRIVER): overlay where the kernel has it and we are root (layers
# are diffs), else vfs, which works anywhere but stores every layer and every container as a
# full copy of the file system. Each driver has its own store.
if [[ -z ${KAITO_IMAGE_DRIVER:-} ]]; then
    if [[ $(id -u) == 0 ]] && grep -qw overlay /proc/filesystems 2>/dev/null; then
        KAITO_IMAGE_DRIVER=overlay
    else
        KAITO_IMAGE_DRIVER=vfs
    fi
fi
export KAITO_IMAGE_DRIVER
KAITO_STORAGE_FLAGS=(--root "$KAITO_IMAGE_STORE/$KAITO_IMAGE_DRIVER" --runroot "$KAITO_IMAGE_STORE/run-$KAITO_IMAGE_DRIVER"
    --storage-driver "$KAITO_IMAGE_DRIVER")

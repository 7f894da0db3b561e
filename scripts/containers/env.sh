# Sourced by scripts/build-image.sh and scripts/podman.sh: one place that says where this
# project's images live and how podman/buildah run them. Everything can be overridden.
#   KAITO_IMAGE_STORE   image storage (vfs driver): default /var/lib/kaito-runtime/containers
#                       as root, ~/.local/share/kaito-runtime/containers otherwise
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
# vfs: works on any file system and kernel (no overlay mounts), at the cost of full layer copies.
KAITO_STORAGE_FLAGS=(--root "$KAITO_IMAGE_STORE/root" --runroot "$KAITO_IMAGE_STORE/run" --storage-driver vfs)

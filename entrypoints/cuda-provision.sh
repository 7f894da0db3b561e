#!/bin/sh
# KAITO's /workspace/cuda-provision.sh, run by the cuda-toolkit-provisioner init container (as
# root, with the same image) for models whose DeepGEMM kernels are compiled at run time:
#
#   flock "$1" /workspace/cuda-provision.sh "$1"
#
# It installs the JIT subset of the CUDA 12.9 toolkit (nvcc, cudart-dev, nvrtc-dev, cccl,
# cublas-dev, curand-dev) from NVIDIA's Debian 12 apt repository and copies it into TARGET (a node
# hostPath the serving container mounts read-only as CUDA_HOME). Idempotent: TARGET/bin/nvcc
# already there -> nothing to do. nvcc is copied last, so an interrupted run never leaves a half
# toolkit that the next run would take as done.
#
# Only this init container runs as root; the serving container stays non-root
# (docs/container.md). Test hooks: CUDA_PROVISION_SOURCE (where apt installs the toolkit,
# default /usr/local/cuda-12.9) and CUDA_PROVISION_SKIP_REPO=1 (the repository is already set up).
set -eu

me=cuda-provision.sh
target=${1:-/opt/cuda}
version=12-9
source_dir=${CUDA_PROVISION_SOURCE:-/usr/local/cuda-12.9}

if [ -x "$target/bin/nvcc" ]; then
    echo "$me: nvcc already present at $target/bin/nvcc; nothing to do"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "$me: error: must run as root to install with apt (uid $(id -u)); KAITO's cuda-toolkit-provisioner init container runs it as root (securityContext runAsUser: 0)" >&2
    exit 1
fi
case "$(uname -m)" in
x86_64) repo_arch=x86_64 ;;
aarch64) repo_arch=sbsa ;;
*) echo "$me: error: no CUDA repository for architecture $(uname -m)" >&2; exit 1 ;;
esac

export DEBIAN_FRONTEND=noninteractive
if [ "${CUDA_PROVISION_SKIP_REPO:-0}" != 1 ]; then
    keyring=$(mktemp /tmp/cuda-keyring.XXXXXX.deb)
    url="https://developer.download.nvidia.com/compute/cuda/repos/debian12/$repo_arch/cuda-keyring_1.1-1_all.deb"
    if command -v curl >/dev/null 2>&1; then
        curl -fsSL "$url" -o "$keyring"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$url" "$keyring"
    fi
    dpkg -i "$keyring"
    rm -f "$keyring"
fi
apt-get update -y
apt-get install --no-install-recommends -y \
    "cuda-nvcc-$version" "cuda-cudart-dev-$version" "cuda-nvrtc-dev-$version" \
    "cuda-cccl-$version" "libcublas-dev-$version" "libcurand-dev-$version"
if [ ! -x "$source_dir/bin/nvcc" ]; then
    echo "$me: error: apt finished but $source_dir/bin/nvcc is missing" >&2
    exit 1
fi
mkdir -p "$target"
rm -rf "$target.partial" "$target.nvcc"
cp -a "$source_dir/." "$target.partial/"
mv "$target.partial/bin/nvcc" "$target.nvcc"
cp -a "$target.partial/." "$target/"  # into the (maybe pre-created) hostPath folder
mv "$target.nvcc" "$target/bin/nvcc"   # last: the next run's "already present" check
rm -rf "$target.partial"
"$target/bin/nvcc" --version || true
echo "$me: CUDA 12.9 toolkit ready in $target"

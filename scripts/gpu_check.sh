#!/usr/bin/env bash
# One prepared run on a machine with a real NVIDIA GPU (no vLLM needed): the NVML / inventory tests
# and kaito-run's node view and planning against the real GPU. Output goes to $OUT/gpu-check.log.
#
#   bash scripts/gpu_check.sh            (wheels for missing packages may be carried in .whl/)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/kaito-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD
fi
KR="python3 -m kaito_runtime.cli"
{
    echo "== nvidia-smi"; nvidia-smi --query-gpu=index,name,uuid,memory.total,memory.free,compute_cap,driver_version --format=csv
    python3 -m compileall -q kaito_runtime  # time the dry runs as an installed package would run
    echo "== tests"
    python3 -m pytest -q -p no:cacheprovider tests/node/test_nvml.py tests/node/test_inventory.py tests/node/test_skus.py \
        tests/node/test_topology.py tests/plan/test_plan.py tests/launch/test_vllm_command.py tests/test_render.py \
        tests/test_rendezvous.py tests/model/test_catalog.py
    echo "== doctor"; $KR doctor; echo "rc=$?"
    echo "== doctor with CUDA_VISIBLE_DEVICES=''"; CUDA_VISIBLE_DEVICES="" $KR doctor; echo "rc=$?"
    uuid=$(nvidia-smi --query-gpu=uuid --format=csv,noheader | head -1)
    echo "== doctor with CUDA_VISIBLE_DEVICES=$uuid"; CUDA_VISIBLE_DEVICES=$uuid $KR doctor; echo "rc=$?"
    for preset in phi-4-mini-instruct llama-3.1-8b-instruct gpt-oss-20b qwen2.5-coder-32b-instruct gemma-3-27b-instruct gpt-oss-120b llama-3.3-70b-instruct; do
        echo "== dry-run $preset on this GPU"
        $KR --preset "$preset" --dry-run; rc=$?
        walls=""
        for _ in 1 2 3; do
            start=$(date +%s.%N); $KR --preset "$preset" --dry-run >/dev/null 2>&1; end=$(date +%s.%N)
            walls="$walls $(python3 -c "print(round($end-$start,3))")"
        done
        echo "rc=$rc wall seconds (3 more runs):$walls"
    done
    echo "== bare interpreter start, for the ratio"
    for _ in 1 2 3; do start=$(date +%s.%N); python3 -c pass; end=$(date +%s.%N); python3 -c "print('python -c pass', round($end-$start,3))"; done
    echo "== dry-run with 40 GiB of this GPU taken by another process"
    python3 - <<'PY'
import json, subprocess, sys, torch
hog = torch.empty(40 * 1024**3, dtype=torch.uint8, device="cuda")
out = subprocess.run([sys.executable, "-m", "kaito_runtime.cli", "--preset", "llama-3.1-8b-instruct", "--dry-run", "-o", "json"],
                     capture_output=True, text=True)
print("rc", out.returncode, out.stderr[-2000:])
if out.returncode == 0:
    plan = json.loads(out.stdout)["plan"]
    print("utilization", plan["gpu_memory_utilization"], "free GiB", round(plan["memory"]["free"] / 2**30, 1),
          "total GiB", round(plan["memory"]["total"] / 2**30, 1), "max_model_len", plan["max_model_len"], plan["max_model_len_auto"])
del hog
PY
} 2>&1 | tee "$OUT/gpu-check.log"

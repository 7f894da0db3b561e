#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the venv if needed, then run every test,
# the real-vLLM end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The end-to-end tests skip only where vLLM is absent; here setup.sh installed it, so they must run.
export KAITO_REQUIRE_VLLM=1
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up the venv if needed, then run every test,
# the real-vLLM end-to-end tests included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"

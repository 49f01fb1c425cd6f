#!/usr/bin/env bash
# The first run on a GPU (issue 18): set up as `make test` does, then every CUDA path once, one line
# per check. No network needed. Usage: bash scripts/gpu-smoke.sh [--device cpu for a dry run]
set -euo pipefail
cd "$(dirname "$0")/.."
make .venv/.mtkd-installed >/dev/null
exec .venv/bin/python scripts/gpu_smoke.py "$@"

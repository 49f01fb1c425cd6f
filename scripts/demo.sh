#!/usr/bin/env bash
# The demo: `mtkd study` on Animal-MNIST with two probe-adapted ImageNet teachers and a small
# student. Finished runs are kept and an interrupted study continues, so it can be re-run at will.
set -euo pipefail
cd "$(dirname "$0")/.."
mtkd datasets
mtkd study configs/demo/study.yaml "$@"

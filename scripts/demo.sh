#!/usr/bin/env bash
# The demo: `mtkd study` on Animal-MNIST with two probe-adapted ImageNet teachers and a small
# student (or the study config given as the first argument: `make demo-pool` gives
# configs/demo/pool.yaml). Finished runs are kept and an interrupted study continues, so it can be re-run at will.
set -euo pipefail
cd "$(dirname "$0")/.."
mtkd datasets
mtkd study "${1:-configs/demo/study.yaml}" "${@:2}"

#!/usr/bin/env bash
# The demo: two probe-adapted ImageNet teachers and a small student alone, on Animal-MNIST.
# A finished run is skipped and an interrupted one resumed, so the demo can be re-run at will.
set -euo pipefail
cd "$(dirname "$0")/.."

run() {  # run CONFIG COMMAND...
  local config=$1; shift
  local out
  out=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['output']['dir'])" "$config")
  if [ -f "$out/summary.json" ]; then
    echo "== $out: done already"
  elif [ -f "$out/last.json" ]; then
    echo "== $out: resuming"; mtkd "$@" --config "$config" --resume
  else
    echo "== $out"; mtkd "$@" --config "$config"
  fi
}

mtkd datasets
run configs/demo/teacher-mobilenet_v2.yaml teacher fit
run configs/demo/teacher-tf_efficientnet_lite0.yaml teacher fit
run configs/demo/student.yaml train
mtkd summary runs/demo

#!/usr/bin/env bash
# Real datasets from the system package manager, where it is usable: Fashion-MNIST from Debian.
set -u
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "fashion-mnist: already installed"
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
     { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; then
    echo "fashion-mnist: installed dataset-fashion-mnist"
  else
    echo "fashion-mnist: apt-get install dataset-fashion-mnist failed; skipping (its tests will be skipped)"
  fi
else
  echo "fashion-mnist: apt-get not usable here (not root or not Debian); skipping. Use --data-dir with its IDX files."
fi
exit 0

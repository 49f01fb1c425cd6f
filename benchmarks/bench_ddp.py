"""Training throughput of 2 processes (torchrun, DDP, gloo) against 1 process, side by side in one run.

    python benchmarks/bench_ddp.py [--dataset animal-mnist] [--models cnn_small,resnet20] [--epochs 3]

All use every core: 1 process with all threads, or 2 processes with half each. The global
batch, data and seed are the same (with train.sync_bn the 2 processes take exactly the steps
of 1); the ratio is the median training images/s (validation excluded) of 2 processes over 1.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def images_per_second(
    model: str, args: argparse.Namespace, nproc: int, out: Path, sync_bn: bool = False
) -> tuple[float, float]:
    """(median training images/s over the epochs after the first, last validation accuracy)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    cmd = [sys.executable, "-m", "mtkd", "train", "--dataset", args.dataset, "--model", model,
           "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--out", str(out),
           "--set", "output.tensorboard=false", "--set", "output.progress=false",
           "--set", f"train.threads={threads}", "--set", f"train.sync_bn={sync_bn}", "--nproc", str(nproc)]  # fmt: skip
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    ips = [float(r["train_ips"]) for r in rows[1:]] or [float(rows[0]["train_ips"])]
    return statistics.median(ips), float(rows[-1]["val_acc"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="animal-mnist")
    ap.add_argument("--models", default="cnn_small,resnet20")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-ddp-"))
    print(f"{args.dataset}, {args.epochs} epochs, global batch {args.batch_size}, {os.cpu_count()} cores")
    print(f"{'model':<12} {'1 proc img/s':>13} {'2 procs':>8} {'ratio':>6} {'2, sync_bn':>11} {'ratio':>6}"
          "  val acc (1 / 2 / 2 sync_bn)")  # fmt: skip
    for model in args.models.split(","):
        one, acc1 = images_per_second(model, args, 1, tmp / f"{model}-1")
        two, acc2 = images_per_second(model, args, 2, tmp / f"{model}-2")
        synced, acc3 = images_per_second(model, args, 2, tmp / f"{model}-2s", sync_bn=True)
        print(f"{model:<12} {one:>13.0f} {two:>8.0f} {two / one:>6.2f} {synced:>11.0f} {synced / one:>6.2f}"
              f"  {acc1:.4f} / {acc2:.4f} / {acc3:.4f}")  # fmt: skip


if __name__ == "__main__":
    main()

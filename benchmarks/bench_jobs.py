"""Small-student study runs side by side (--jobs N, 1 thread each) against one at a time (all
threads), in one run on this machine: the wall time of the same study grid both ways.

    python benchmarks/bench_jobs.py [--dataset animal-mnist] [--model cnn_small] [--runs 4] [--epochs 3]

The grid is `runs` seeds of the student alone (no teacher: what is timed is the student's
training, which is most of a study's time). Each way gets a fresh study folder; the printed
ratio is (one at a time) / (side by side): above 1, side by side is faster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def study_seconds(args: argparse.Namespace, jobs: int, threads: int, root: Path) -> float:
    out = root / f"jobs{jobs}-threads{threads}"
    config = root / f"study-{jobs}.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bench-jobs", "output": str(out), "data": {"name": args.dataset},
        "seeds": list(range(args.runs)), "methods": ["none"], "threads": threads,
        "student": {"model": {"name": args.model}, "schedule": {"epochs": args.epochs},
                    "train": {"batch_size": 128}},
    }))  # fmt: skip
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mtkd", "study", str(config), "--jobs", str(jobs)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        one = study_seconds(args, 1, cores, root)
        side = study_seconds(args, cores, 1, root)
    print(f"{args.runs} runs of {args.model} on {args.dataset}, {args.epochs} epochs, {cores} cores")
    print(f"one at a time, {cores} threads each: {one:.1f} s")
    print(f"{cores} side by side, 1 thread each:   {side:.1f} s")
    print(f"ratio (one at a time / side by side): {one / side:.2f}x")


if __name__ == "__main__":
    main()

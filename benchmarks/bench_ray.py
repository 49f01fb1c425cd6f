"""What Ray costs: the same study with the local runner (--jobs 2) and with --ray on a local Ray
instance (this machine's cores), in one run on this machine, timed in the order A B B A.

    python benchmarks/bench_ray.py [--dataset animal-mnist] [--model cnn_small] [--runs 6] [--epochs 3]

The grid is `runs` seeds of the student alone, one compute thread each (`threads: 1`): what is
timed is runs going to workers, which is what Ray changes. Each study gets a fresh folder; the
dataset's split is made once beforehand in a shared MTKD_HOME. The printed ratio is
(--ray) / (--jobs 2): above 1, Ray is slower. The results of both are checked equal.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml


def study_seconds(args: argparse.Namespace, mode: str, root: Path, tag: str) -> tuple[float, list]:
    out = root / f"{mode}-{tag}"
    config = root / f"{mode}-{tag}.yaml"
    config.write_text(yaml.safe_dump({
        "name": "bench-ray", "output": str(out), "data": {"name": args.dataset},
        "seeds": list(range(args.runs)), "methods": ["none"], "threads": 1,
        "student": {"model": {"name": args.model}, "schedule": {"epochs": args.epochs},
                    "train": {"batch_size": 128}},
    }))  # fmt: skip
    flag = ["--ray"] if mode == "ray" else ["--jobs", "2"]
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mtkd", "study", str(config), *flag],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    with open(out / "results.csv") as fh:
        rows = sorted((r["run"], r["val_acc"], r["test_acc"]) for r in csv.DictReader(fh))
    return seconds, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--model", default="cnn_small")
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MTKD_HOME"] = str(root / "home")
        subprocess.run([sys.executable, "-m", "mtkd", "train", "--dataset", args.dataset, "--epochs", "1",
                        "--out", str(root / "warm")], check=True, capture_output=True)  # fmt: skip
        times: dict[str, list[float]] = {"jobs": [], "ray": []}
        results = []
        for i, mode in enumerate(["jobs", "ray", "ray", "jobs"]):
            seconds, rows = study_seconds(args, mode, root, str(i))
            times[mode].append(seconds)
            results.append(rows)
    same = all(r == results[0] for r in results)
    print(f"{args.runs} runs of {args.model} on {args.dataset}, {args.epochs} epochs, 1 thread each, "
          f"{os.cpu_count()} cores; order jobs, ray, ray, jobs")  # fmt: skip
    for mode, label in (("jobs", "--jobs 2 (local runner)"), ("ray", "--ray (local Ray instance)")):
        print(f"{label}: {', '.join(f'{t:.1f} s' for t in times[mode])}; mean {sum(times[mode]) / 2:.1f} s")
    ratio = sum(times["ray"]) / sum(times["jobs"])
    print(f"ratio (--ray / --jobs 2): {ratio:.2f}x; results identical in all four: {same}")


if __name__ == "__main__":
    main()

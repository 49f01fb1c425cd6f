"""Kill a small study with SIGKILL at seeded random moments, rerun it, and compare with an uninterrupted one.

    .venv/bin/python scripts/kill_test.py                  # 20 kills, a CPU hog on every core
    .venv/bin/python scripts/kill_test.py --kills 5 --no-hog

The study (digits: one teacher adapted, its cache built, the student alone, with `features` and
with `kd`) first runs once without interruption. Then, for each kill, it starts again in a new
folder with an empty MTKD_HOME (so teacher fits and cache builds are in reach of the kill), is
killed at a moment drawn from a seeded generator between its start and the reference's duration,
and is run again to the end (every other rerun with `--jobs 2`). A kill passes when results.csv
(timings aside) and the SHA-256 of every run's best and last weights equal the reference's.
Where each kill landed is the study's last line of output before it.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

STUDY = {
    "data": {"name": "digits"},
    "seeds": [0],
    "methods": ["none", "features", "kd"],
    "student": {"model": {"name": "cnn_small"}, "schedule": {"epochs": 4}, "transfer": {"views": 2},
                "train": {"batch_size": 64}},
    "teacher_fit": {"schedule": {"epochs": 2}, "teacher": {"input_size": 32}},
    "teachers": ["mobilenet_v2"],
    "latency": {"repeats": 3},
    "threads": 2,
}  # fmt: skip
TIMINGS = {"latency_ms", "seconds"}


def _hog() -> None:
    while True:
        pass


def _study(folder: Path) -> tuple[list[str], dict[str, str]]:
    config = folder / "study.yaml"
    config.write_text(yaml.safe_dump({**STUDY, "output": str(folder / "out")}))
    env = {**os.environ, "MTKD_HOME": str(folder / "home"), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "mtkd", "study", str(config)], env


def _results(out: Path) -> tuple[list[dict], dict[str, str]]:
    """results.csv without timings, and run folder -> SHA-256 of its best and last weights."""
    with open(out / "results.csv", newline="") as fh:
        rows = [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(fh)]
    weights = {}
    for meta in sorted(out.rglob("*.json")):
        if meta.name in ("best.json", "last.json"):
            record = json.loads(meta.read_text())
            weights[str(meta.relative_to(out))] = record["files"]["weights"]["sha256"]
    return rows, weights


def _run(folder: Path, extra: list[str] = (), kill_after: float | None = None) -> str:
    """Run the study in `folder`; with kill_after, SIGKILL its process group then. Its last line."""
    cmd, env = _study(folder)
    log = folder / "log.txt"
    with open(log, "a") as fh:
        proc = subprocess.Popen(
            [*cmd, *extra], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
            return lines[-1].strip()[:110] if lines else "(before any output)"
    if proc.returncode != 0:
        raise SystemExit(f"the study failed (exit {proc.returncode}); see {log}")
    return "(finished before the kill)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-hog", action="store_true", help="no CPU-bound process beside the study")
    parser.add_argument("--keep", action="store_true", help="keep the folders (printed at the end)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mtkd-kill-"))
    hogs = (
        []
        if args.no_hog
        else [multiprocessing.Process(target=_hog, daemon=True) for _ in range(os.cpu_count() or 1)]
    )
    for h in hogs:
        h.start()
    same = -1
    try:
        started = time.perf_counter()
        (root / "reference").mkdir()
        _run(root / "reference")
        duration = time.perf_counter() - started
        reference = _results(root / "reference" / "out")
        print(f"reference study: {duration:.0f} s, {len(reference[0])} rows, {len(reference[1])} checkpoints; "
              f"CPU hog: {len(hogs)} processes", flush=True)  # fmt: skip
        rng, same, landed = random.Random(args.seed), 0, 0
        for k in range(1, args.kills + 1):
            folder = root / f"kill{k:02d}"
            folder.mkdir()
            moment = rng.uniform(0.5, duration)
            where = _run(folder, kill_after=moment)
            landed += where != "(finished before the kill)"
            jobs = ["--jobs", "2"] if k % 2 == 0 else []
            _run(folder, jobs)
            ok = _results(folder / "out") == reference
            same += ok
            print(f"kill {k:2d} at {moment:5.1f} s, rerun {'--jobs 2' if jobs else '--jobs 1'}: "
                  f"{'identical' if ok else 'DIFFERENT'}  | landed in: {where}", flush=True)  # fmt: skip
            if not args.keep and ok:
                shutil.rmtree(folder)
        print(f"{same}/{args.kills} studies ({landed} killed, the others finished first) ended with results "
              "identical to the uninterrupted one")  # fmt: skip
    finally:
        for h in hogs:
            h.terminate()
        if not args.keep and same == args.kills:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"folders kept in {root}")
    sys.exit(0 if same == args.kills else 1)


if __name__ == "__main__":
    main()

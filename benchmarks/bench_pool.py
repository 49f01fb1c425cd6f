"""A pool of 8 candidates, max_teachers 3: what greedy and halving spend against the grid of
every teacher set, in student runs and wall time, and whether their pick is the grid's best.

    python benchmarks/bench_pool.py [--dataset animal-mnist] [--epochs 4] [--budget 12]

The pool is the four offline ImageNet networks at two input sizes (64 and 96 px, probe-adapted).
One study folder per strategy, the teachers and their caches shared (MTKD_HOME), built first by
a warm-up study so that no strategy pays for them. The grid runs every set up to 3 teachers with
`features` on one seed (93 student runs with the student alone), at the same reduced student
schedule as the searches, so their picks can be placed in it: the grid's test accuracy of each
search's pick, its rank among the grid's sets by validation, and the grid's best. The searches
run on seed 1000 and confirm on seed 0 (leave-one-out off); the grid's runs are on seed 0 too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

POOL = [
    {"name": name, "input_size": [64, 96]}
    for name in ("mobilenet_v2", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
]


def merge(into: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def study(root: Path, name: str, args: argparse.Namespace, **extra) -> tuple[float, dict]:
    """Run one study in a child process; (wall seconds, its results.json)."""
    out = root / name
    spec = {
        "name": f"bench-pool-{name}", "output": str(out), "data": {"name": args.dataset},
        "seeds": [0], "max_teachers": 3, "methods": ["none", "features"], "teachers": POOL,
        "teacher_fit": {"teacher": {"head": "gap"}, "adapt": {"mode": "probe"},
                        "optim": {"name": "adamw", "lr": 0.001}, "schedule": {"epochs": args.teacher_epochs}},
        "student": {"model": {"name": "cnn_small"}, "optim": {"name": "sgd", "lr": 0.05, "weight_decay": 0.0005},
                    "schedule": {"epochs": args.epochs, "warmup_epochs": 1},
                    "train": {"batch_size": 128, "crop_padding": 2}, "transfer": {"views": 2}},
    }  # fmt: skip
    merge(spec, extra)
    config = root / f"{name}.yaml"
    config.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mtkd", "study", str(config)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - start, json.loads((out / "results.json").read_text())


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.0f}"


def student_runs(results: dict, stages: tuple[str, ...]) -> list[dict]:
    return [r for r in results["runs"] if r["kind"] == "student" and r.get("stage", "confirm") in stages]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="animal-mnist")
    parser.add_argument("--epochs", type=int, default=4, help="the student's (reduced) full schedule")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--budget", type=float, default=12, help="search.budget, student-run equivalents")
    parser.add_argument("--keep", type=Path, help="keep the study folders here (default: a temporary folder)")
    parser.add_argument(
        "--from", dest="again", type=Path, help="print again from the folders of a --keep run"
    )
    args = parser.parse_args()
    if args.again:  # the same studies' results; the wall times where that run recorded them
        walls = (
            json.loads((args.again / "walls.json").read_text())
            if (args.again / "walls.json").is_file()
            else {}
        )
        read = {
            n: json.loads((args.again / n / "results.json").read_text())
            for n in ("grid", "greedy", "halving")
        }
        warm, grid_s, grid = walls.get("warmup"), walls.get("grid"), read["grid"]
        found = {k: (walls.get(k), read[k]) for k in ("greedy", "halving")}
    else:
        with tempfile.TemporaryDirectory() as tmp:
            root = args.keep or Path(tmp)
            root.mkdir(parents=True, exist_ok=True)
            os.environ.setdefault("MTKD_HOME", str(root / "home"))
            warm, _ = study(root, "warmup", args, max_teachers=1, methods=["features"], search={"strategy": "grid"},
                            student={"schedule": {"epochs": 1}})  # fmt: skip
            grid_s, grid = study(root, "grid", args, search={"strategy": "grid"})
            found = {}
            for strategy in ("greedy", "halving"):
                found[strategy] = study(root, strategy, args, search={
                    "strategy": strategy, "budget": args.budget, "screen_epochs": 1, "leave_one_out": False})  # fmt: skip
            walls = {"warmup": warm, "grid": grid_s, **{k: v[0] for k, v in found.items()}}
            (root / "walls.json").write_text(json.dumps(walls))

    runs = student_runs(grid, ("confirm",))
    sets = {r["teachers"]: r for r in runs if r["method"] == "features"}
    by_val = sorted(sets, key=lambda t: -float(sets[t]["val_acc"]))
    best = by_val[0]
    alone = next(r for r in runs if r["method"] == "none")
    grid_seconds = sum(float(r["seconds"]) for r in runs)
    print(f"{args.dataset}: pool of {len(POOL) * 2} candidates, max_teachers 3, student cnn_small "
          f"{args.epochs} epochs, budget {args.budget:g}, {os.cpu_count()} cores; warm-up (teachers, caches) "
          f"{_s(warm)} s")  # fmt: skip
    head = f"{'strategy':<9} {'student runs':>12} {'run-equiv':>9} {'run s':>7} {'study s':>8} {'ratio':>6}"
    print(head)
    print(f"{'grid':<9} {len(runs):>12} {len(runs):>9.2f} {grid_seconds:>7.0f} {_s(grid_s):>8} {1:>6.2f}")
    picks = {}
    for strategy, (wall, res) in found.items():
        search = student_runs(res, ("screen", "search"))
        spent = res["search"]["cnn_small"]["spent"]
        seconds = sum(float(r["seconds"]) for r in search)
        print(f"{strategy:<9} {len(search):>12} {spent:>9.2f} {seconds:>7.0f} {_s(wall):>8} "
              f"{seconds / grid_seconds:>6.2f}")  # fmt: skip
        picks[strategy] = "+".join(res["search"]["cnn_small"]["chosen"][1])
    print(
        "(run s: the student runs' own seconds, screening and search only for a search; study s: the "
        "whole study, confirmation included; ratio: run s against the grid's)"
    )
    print(f"grid's best by validation: {best} (val {100 * float(sets[best]['val_acc']):.2f}, "
          f"test {100 * float(sets[best]['test_acc']):.2f}); alone: test {100 * float(alone['test_acc']):.2f}")  # fmt: skip
    val = [100 * float(r["val_acc"]) for r in sets.values()]
    test = [100 * float(r["test_acc"]) for r in sets.values()]
    from scipy.stats import spearmanr

    print(f"the grid's {len(sets)} sets: val {np.mean(val):.2f} +- {np.std(val):.2f} (one image is "
          f"{100 / int(alone['val_count']):.2f}), test {np.mean(test):.2f} +- {np.std(test):.2f}; Spearman rho of "
          f"val against test over the sets {spearmanr(val, test).statistic:+.2f}")  # fmt: skip
    for strategy, pick in picks.items():
        r = sets[pick]
        print(f"{strategy} picked {pick}: rank {by_val.index(pick) + 1} of {len(sets)} in the grid by validation, "
              f"val {100 * float(r['val_acc']):.2f} ({100 * (float(r['val_acc']) - float(sets[best]['val_acc'])):+.2f}), "
              f"test {100 * float(r['test_acc']):.2f} ({100 * (float(r['test_acc']) - float(sets[best]['test_acc'])):+.2f})")  # fmt: skip


if __name__ == "__main__":
    main()

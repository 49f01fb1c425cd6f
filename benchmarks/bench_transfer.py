"""The cost of teachers: a student trained from K = 1, 2, 4 cached teachers (and one online
teacher) against the same student alone, building the cache against the bare teacher
forward pass, and the peak memory of each run, all measured side by side in one run.

    python benchmarks/bench_transfer.py [--dataset animal-mnist] [--images 6000] [--epochs 3]
        [--views 2] [--rounds 2] [--methods features,avg_kd]
        # also: camkd, hint, dkd, ebkd, dist, crd, reviewkd, mtkd_rl

camkd (its published feature term on the teachers' last 1280x3x3 maps) and hint (cnn_small's
last 64x7x7 map regressed onto the teachers' last maps) read intermediate maps from the cache.

Teachers: the four offline ImageNet networks at 96 px with a GAP head for the dataset's
classes (random head weights: only the cost matters). Student: cnn_small, batch 128. The
caches are built first, then every training run is a fresh child process (so its peak RSS is
its own, from the end of data loading), in `rounds` interleaved rounds; an epoch's time is the median over the epochs after
the first of all rounds (training loop only, validation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TEACHERS = ["mobilenet_v2", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


def _dataset(name: str, images: int):  # noqa: ANN202
    from mtkd.data import load_dataset
    from mtkd.data.base import ImageSet

    ds = load_dataset(name)
    ds.train = ImageSet(ds.train.images[:images], ds.train.labels[:images])
    ds.val = ImageSet(ds.val.images[:500], ds.val.labels[:500])
    return ds


def _teachers(k: int, num_classes: int) -> list:
    from mtkd.teachers import Teacher
    from mtkd.teachers.nets import TeacherNet, TeacherSpec

    out = []
    for name in TEACHERS[:k]:
        torch.manual_seed(0)
        net = TeacherNet(TeacherSpec(name, input_size=96, head="gap", num_classes=num_classes)).eval()
        out.append(Teacher(name, net, True))
    return out


def _method(name: str, k: int) -> str | dict:
    """A method by name; hint with cnn_small's last map onto the teachers' last maps (at 96 px);
    reviewkd with cnn_small's 14x14 and 7x7 maps against each teacher's stride-4 and stride-8
    stages (24x24 and 12x12 at 96 px)."""
    if name == "reviewkd":
        stages = {"mobilenet_v2": ["body.features.3", "body.features.6"]}
        layers = [stages.get(t, ["body.model.blocks.1", "body.model.blocks.2"]) for t in TEACHERS[:k]]
        return {"name": "reviewkd", "student_layers": ["features.4", "features.8"], "teacher_layers": layers}
    if name != "hint":
        return name
    return {"name": "hint", "student_layer": "features", "teacher_layer": "body", "student_channels": 64,
            "teacher_channels": [1280] * k, "student_size": 7, "teacher_size": 3}  # fmt: skip


def _config(args: argparse.Namespace, k: int, method: str, mode: str, epochs: int):  # noqa: ANN202
    from mtkd.engine.config import TrainConfig, build_config

    return build_config(
        TrainConfig,
        overrides={"data.name": args.dataset, "model.name": "cnn_small", "schedule.epochs": epochs,
                   "transfer.teachers": ["x"] * k, "transfer.methods": [_method(method, k)] if k else ["none"],
                   "transfer.teacher_mode": mode, "transfer.views": args.views,
                   "output.tensorboard": False, "output.progress": False},
    )  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """One training run; prints its epoch times and peak RSS as JSON."""
    from mtkd.data.augment import Augment
    from mtkd.data.batches import Normalize
    from mtkd.engine.builders import ImageTransform
    from mtkd.engine.trainer import FitData, Trainer, classifier_task
    from mtkd.engine.transfer import build_methods, prepare_teachers, transfer_task
    from mtkd.models.adapters import OutputsView
    from mtkd.models.zoo import create_student

    k, method, mode = args.child
    k = int(k)
    epochs = 1 if mode == "online" else args.epochs
    cfg = _config(args, k, method, mode, epochs)
    ds = _dataset(args.dataset, args.images)
    import gc

    gc.collect()
    # Peak memory from here on: loading the whole dataset before taking its first N images
    # would otherwise be the peak of every run.
    Path("/proc/self/clear_refs").write_text("5")
    teachers = _teachers(k, ds.num_classes)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    student = create_student("cnn_small", ds.num_classes, ds.channels)
    methods = build_methods(cfg, student.num_features, teachers, ds.num_classes)
    normalize = Normalize(ds.mean, ds.std)
    if teachers:
        view = OutputsView(student)
        prepare_teachers(teachers, methods, ds, cfg, ds.hflip, dev)
        task = transfer_task(student, view, methods, teachers, ds, normalize, cfg, ds.hflip, dev)
    else:
        augment = Augment(padding=cfg.train.crop_padding, hflip=ds.hflip)
        transform = ImageTransform(normalize, augment, ds.image_size)
        task = classifier_task(student, transform, [{"params": list(student.parameters())}], 0.0)
    data = FitData(ds.train.images, ds.train.labels, ds.val.images, ds.val.labels)
    out = cfg.output.model_copy(update={"dir": Path(args.out)})
    trainer = Trainer(
        task, data, cfg.optim, cfg.schedule, cfg.train, out,
        {"kind": "student", "model": {}, "data": {}, "config": {}}, dev,
    )  # fmt: skip
    trainer.fit()
    import csv

    with open(Path(args.out) / "metrics.csv") as fh:
        seconds = [float(r["train_seconds"]) for r in csv.DictReader(fh)]
    status = Path("/proc/self/status").read_text().splitlines()
    rss = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"seconds": seconds, "rss_mb": rss}))


def build_caches(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """Build the 4 caches; for each: (teacher, cache build img/s, bare forward img/s on the same images)."""
    from mtkd.data.augment import Augment
    from mtkd.data.batches import batch_indices
    from mtkd.teachers.cache import CHUNK, CacheSpec, TeacherImages, build_cache, view_params

    ds = _dataset(args.dataset, args.images)
    images = ds.train.images
    params = view_params(len(images), args.views, Augment(padding=2, hflip=ds.hflip), 0, ds.image_size)
    rows = []
    for t in _teachers(4, ds.num_classes):
        with torch.inference_mode():  # the bare forward pass over the same views, chunks and outputs
            start = time.perf_counter()
            for v in range(args.views):
                for index in batch_indices(len(images), CHUNK, False):
                    batch = images[index] if params[v] is None else params[v][index].apply(images[index])
                    fmap = t.net.forward_features(batch.float() / 255.0)
                    t.net.forward_head(fmap, pre_logits=True), t.net.forward_head(fmap)
            bare = args.views * len(images) / (time.perf_counter() - start)
        start = time.perf_counter()
        spec = CacheSpec(args.views, 2, ds.hflip, 0, "float16", with_logits=True)
        build_cache(t.net, t.sha, TeacherImages(images, ds.train.labels), spec, torch.device("cpu"), t.name)
        built = args.views * len(images) / (time.perf_counter() - start)
        rows.append((t.name, built, bare))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="animal-mnist")
    ap.add_argument("--images", type=int, default=6000, help="training images used (the first N of train)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--methods", default="features,avg_kd")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-"))
    os.environ["MTKD_HOME"] = str(tmp / "home")
    start = time.perf_counter()
    print(f"{args.dataset}: {args.images} images, {args.epochs} epochs, {args.views} views, "
          f"{args.rounds} rounds, threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'cache build':<24}{'build img/s':>12}{'bare img/s':>12}{'ratio':>7}")
    for name, built, bare in build_caches(args):
        print(f"{name:<24}{built:>12.0f}{bare:>12.0f}{built / bare:>7.2f}")
    runs = [("0", "none", "cached")] + [
        (str(k), m, "cached") for m in args.methods.split(",") for k in (1, 2, 4)
    ]
    runs.append(("1", args.methods.split(",")[0], "online"))
    seconds: dict[tuple, list[float]] = {r: [] for r in runs}
    rss: dict[tuple, float] = {}
    for r in range(args.rounds):
        for run in runs:
            if run[2] == "online" and r:
                continue  # one online epoch is enough to see its cost
            cmd = [sys.executable, __file__, "--child", *run, "--out", str(tmp / f"{'-'.join(run)}-{r}"),
                   "--dataset", args.dataset, "--images", str(args.images), "--epochs", str(args.epochs),
                   "--views", str(args.views)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"run {' '.join(run)} failed:\n{proc.stderr[-3000:]}")
            res = json.loads(proc.stdout.splitlines()[-1])
            seconds[run] += res["seconds"] if run[2] == "online" else res["seconds"][1:]
            rss[run] = max(rss.get(run, 0.0), res["rss_mb"])
    base, base_rss = statistics.median(seconds[runs[0]]), rss[runs[0]]
    print(f"{'run':<32}{'epoch s':>9}{'ratio':>7}{'peak RSS MB':>13}{'ratio':>7}")
    for run in runs:
        k, method, mode = run
        label = "student alone" if k == "0" else f"{method}, {k} {mode} teacher(s)"
        secs = statistics.median(seconds[run])
        print(f"{label:<32}{secs:>9.3f}{secs / base:>7.2f}{rss[run]:>13.0f}{rss[run] / base_rss:>7.2f}")
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

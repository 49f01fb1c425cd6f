"""Epoch time of a student learning from 1, 2 and 4 cached teachers, and from online teachers,
each as a ratio to the same student trained alone, measured side by side in one run.

    python benchmarks/bench_transfer.py [--images 3000] [--epochs 2] [--views 2]

Teachers: the four offline ImageNet networks at 96 px with a GAP head for the dataset's
classes (weights of the head are random: only the cost matters here). Student: cnn_small on
Animal-MNIST. The teacher caches are built first (their time is reported, not in the ratios).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from mtkd.data import load_dataset
from mtkd.data.base import ImageSet
from mtkd.data.batches import Normalize
from mtkd.engine.builders import ImageTransform
from mtkd.engine.config import TrainConfig, build_config
from mtkd.engine.trainer import FitData, Trainer
from mtkd.engine.transfer import Teacher, TransferLoss, build_methods
from mtkd.models.teachers import TeacherNet, TeacherSpec
from mtkd.models.zoo import create_student

TEACHERS = ["mobilenet_v2", "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"]


def epoch_seconds(cfg: TrainConfig, dataset, teachers: list[Teacher], folder: Path) -> float:
    """Median training time of an epoch (validation excluded)."""
    torch.manual_seed(0)
    dev = torch.device("cpu")
    student = create_student(cfg.model.name, dataset.num_classes, dataset.channels)
    methods = build_methods(cfg, student.num_features, teachers, dataset.num_classes)
    normalize = Normalize(dataset.mean, dataset.std)
    loss_fn = (
        TransferLoss(student, methods, teachers, dataset, normalize, cfg, True, dev) if teachers else None
    )
    data = FitData(dataset.train.images, dataset.train.labels, dataset.val.images, dataset.val.labels)
    params = list(student.parameters()) + list(methods.parameters())
    out = cfg.output.model_copy(update={"dir": folder, "tensorboard": False, "progress": False})
    trainer = Trainer(
        student, data, ImageTransform(normalize, cfg.train.crop_padding, True), [{"params": params}],
        cfg.optim, cfg.schedule, cfg.train, out, {"kind": "student", "model": {}, "data": {}, "config": {}}, dev,
        loss_fn=loss_fn, extra=methods if teachers else None, step_module=loss_fn.module if loss_fn else None,
    )  # fmt: skip
    trainer.fit()
    import csv

    with open(folder / "metrics.csv") as fh:
        times = sorted(float(r["train_seconds"]) for r in csv.DictReader(fh))
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=3000, help="training images used (from Animal-MNIST train)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--views", type=int, default=2)
    args = ap.parse_args()
    ds = load_dataset("animal-mnist")
    ds.train = ImageSet(ds.train.images[: args.images], ds.train.labels[: args.images])
    ds.val = ImageSet(ds.val.images[:500], ds.val.labels[:500])
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-"))
    import os

    os.environ["MTKD_HOME"] = str(tmp / "home")
    nets = []
    for name in TEACHERS:
        net = TeacherNet(TeacherSpec(name, input_size=96, head="gap", num_classes=ds.num_classes)).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        nets.append(Teacher(name, net, f"bench-{name}", True))

    def cfg(k: int, mode: str = "cached") -> TrainConfig:
        return build_config(
            TrainConfig,
            overrides={"data.name": "animal-mnist", "model.name": "cnn_small", "schedule.epochs": args.epochs,
                       "transfer.teachers": ["x"] * k, "transfer.methods": ["features"] if k else ["none"],
                       "transfer.teacher_mode": mode, "transfer.views": args.views},
        )  # fmt: skip

    print(
        f"threads {torch.get_num_threads()}, {args.images} images, {args.epochs} epochs, {args.views} views"
    )
    start = time.perf_counter()
    base = epoch_seconds(cfg(0), ds, [], tmp / "alone")
    rows = [("student alone", base)]
    for k in (1, 2, 4):
        t0 = time.perf_counter()
        teachers = [Teacher(t.name, t.net, t.sha, True) for t in nets[:k]]
        secs = epoch_seconds(cfg(k), ds, teachers, tmp / f"cached{k}")
        rows.append((f"{k} cached teacher(s)", secs))
        print(f"  (K={k}: cache build + training took {time.perf_counter() - t0:.0f} s)")
    online = cfg(1, "online").model_copy(
        update={"schedule": cfg(1).schedule.model_copy(update={"epochs": 1})}
    )
    rows.append(
        (
            "1 online teacher",
            epoch_seconds(online, ds, [Teacher(nets[0].name, nets[0].net, "x", True)], tmp / "online"),
        )
    )
    print(f"{'run':<24}{'epoch s':>10}{'ratio to alone':>16}")
    for name, secs in rows:
        print(f"{name:<24}{secs:>10.2f}{secs / base:>16.2f}")
    print(
        f"online / 1 cached: {rows[-1][1] / rows[1][1]:.1f}x slower; total {time.perf_counter() - start:.0f} s"
    )


if __name__ == "__main__":
    main()

"""What train.augment costs: training images/s of a student alone with each pipeline, against the
default crop + flip, side by side in one run (mtkd's Trainer, epochs after the first), and the
augmentation alone (draw + apply per batch, no model).

    python benchmarks/bench_augment.py [--dataset animal-mnist] [--model cnn_small] [--epochs 2]
        [--rounds 2] [--images 20000]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

import torch

PIPELINES = {
    "crop + flip (default)": {},
    "resized crop": {"crop": "resized"},
    "randaugment": {"auto": "randaugment"},
    "trivialaugment": {"auto": "trivialaugment"},
    "jitter + erasing": {"jitter": 0.4, "erasing": 0.25},
    "all + mixup/cutmix": {
        "crop": "resized",
        "auto": "trivialaugment",
        "jitter": 0.4,
        "erasing": 0.25,
        "mixup": 0.2,
        "cutmix": 1.0,
    },  # fmt: skip
}


def epochs_seconds(ds, model_name: str, augment: dict, epochs: int, folder: Path) -> list[float]:  # noqa: ANN001
    from mtkd.data.batches import Normalize
    from mtkd.engine.builders import ImageTransform, augment_of
    from mtkd.engine.config import TrainConfig, build_config
    from mtkd.engine.trainer import FitData, Trainer, classifier_task
    from mtkd.models.zoo import create_student

    cfg = build_config(
        TrainConfig,
        overrides={"schedule.epochs": epochs, "output.progress": False, "output.tensorboard": False,
                   "train.augment": augment},
    )  # fmt: skip
    torch.manual_seed(0)
    model = create_student(model_name, ds.num_classes, ds.channels)
    transform = ImageTransform(
        Normalize(ds.mean, ds.std), augment_of(cfg.train, ds.hflip, ds.mean), ds.image_size
    )
    task = classifier_task(
        model, transform, [{"params": list(model.parameters())}], 0.0, classes=ds.num_classes
    )
    data = FitData(ds.train.images, ds.train.labels, ds.val.images, ds.val.labels)
    out = cfg.output.model_copy(update={"dir": folder})
    Trainer(
        task, data, cfg.optim, cfg.schedule, cfg.train, out,
        {"kind": "student", "model": {}, "data": {}, "config": {}}, torch.device("cpu"),
    ).fit()  # fmt: skip
    with open(folder / "metrics.csv") as fh:
        return [float(r["train_seconds"]) for r in csv.DictReader(fh)]


def augment_only(ds, augment: dict, batches: int = 50, bs: int = 128) -> float:  # noqa: ANN001
    """Images/s of drawing and applying the pipeline alone (and the mix)."""
    from mtkd.engine.builders import augment_of
    from mtkd.engine.config import TrainConfig, build_config

    cfg = build_config(TrainConfig, overrides={"train.augment": augment})
    a = augment_of(cfg.train, ds.hflip, ds.mean)
    gen = torch.Generator().manual_seed(0)
    x, y = ds.train.images[:bs], ds.train.labels[:bs]
    start = time.perf_counter()
    for _ in range(batches):
        d = a.draw(bs, ds.image_size, gen)
        if d is not None:
            out = d.apply(x)
            if d.mix is not None:
                d.mix.apply(out, y, ds.num_classes)
    return batches * bs / (time.perf_counter() - start)


def main() -> None:
    from mtkd.data import load_dataset

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="animal-mnist")
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=20000, help="training images used (the first N)")
    args = ap.parse_args()
    ds = load_dataset(args.dataset)
    n = min(args.images, len(ds.train.labels))
    ds.train.images, ds.train.labels = ds.train.images[:n], ds.train.labels[:n]
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-augment-"))
    print(f"{args.dataset} ({n} train images, {ds.image_size[0]}x{ds.image_size[1]}), {args.model}, "
          f"{args.epochs} epochs x {args.rounds} rounds, threads {torch.get_num_threads()}")  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in PIPELINES}
    for r in range(args.rounds):
        for i, (label, augment) in enumerate(PIPELINES.items()):
            times[label] += epochs_seconds(ds, args.model, augment, args.epochs, tmp / f"{r}-{i}")[1:]
    print(f"{'pipeline':<24}{'train img/s':>12}{'vs default':>12}{'augment alone img/s':>21}")
    base = n / statistics.median(times["crop + flip (default)"])
    for label, augment in PIPELINES.items():
        ips = n / statistics.median(times[label])
        print(f"{label:<24}{ips:>12.0f}{ips / base:>12.2f}{augment_only(ds, augment):>21.0f}")


if __name__ == "__main__":
    main()

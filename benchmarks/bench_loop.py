"""mtkd's training loop against minimal hand-written PyTorch loops, side by side in one run.

    python benchmarks/bench_loop.py [--datasets animal-mnist,fashion-mnist] [--model cnn_small]
        [--epochs 3] [--rounds 2]

Same model, data (uint8 tensors in memory), batch size (128), optimizer (SGD, Nesterov
momentum) and threads. No augmentation on either side (mtkd: crop_padding 0, hflip off), so
both do the same work per step. The hand loops: (a) index the in-memory tensors with a
random permutation; (b) the usual TensorDataset + DataLoader(shuffle=True). mtkd also keeps
its metrics, learning-rate schedule and per-epoch checkpoints; only the training part of an
epoch is timed on every side (validation and checkpoints excluded). The figure is images/s,
median over the epochs after the first of all rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


def hand_tensor(model, ds, epochs: int, bs: int) -> list[float]:  # noqa: ANN001
    """The shortest fast loop: a permutation over in-memory tensors."""
    x, y = ds.train.images, ds.train.labels
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    opt, times = _optimizer(model), []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        perm = torch.randperm(len(y))
        for i in range(0, len(y) - len(y) % bs, bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model((x[idx].float() / 255 - mean) / std), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def hand_dataloader(model, ds, epochs: int, bs: int) -> list[float]:  # noqa: ANN001
    """The usual loop: TensorDataset and DataLoader."""
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    loader = DataLoader(
        TensorDataset(ds.train.images, ds.train.labels), batch_size=bs, shuffle=True, drop_last=True
    )
    opt, times = _optimizer(model), []
    model.train()
    for _ in range(epochs):
        start = time.perf_counter()
        for xb, yb in loader:
            loss = F.cross_entropy(model((xb.float() / 255 - mean) / std), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    return times


def mtkd_loop(model, ds, epochs: int, bs: int, folder: Path) -> list[float]:  # noqa: ANN001
    import csv

    from mtkd.data.batches import Normalize
    from mtkd.engine.builders import ImageTransform
    from mtkd.engine.config import TrainConfig, build_config
    from mtkd.engine.trainer import FitData, Trainer, classifier_task

    cfg = build_config(
        TrainConfig,
        overrides={"schedule.epochs": epochs, "train.batch_size": bs, "train.crop_padding": 0, "train.hflip": "off",
                   "output.progress": False, "output.tensorboard": False},
    )  # fmt: skip
    data = FitData(ds.train.images, ds.train.labels, ds.val.images, ds.val.labels)
    out = cfg.output.model_copy(update={"dir": folder})
    transform = ImageTransform(Normalize(ds.mean, ds.std))
    task = classifier_task(model, transform, [{"params": list(model.parameters())}], 0.0)
    trainer = Trainer(
        task, data, cfg.optim, cfg.schedule, cfg.train, out,
        {"kind": "student", "model": {}, "data": {}, "config": {}}, torch.device("cpu"),
    )  # fmt: skip
    trainer.fit()
    with open(folder / "metrics.csv") as fh:
        return [float(r["train_seconds"]) for r in csv.DictReader(fh)]


def main() -> None:
    from mtkd.data import load_dataset
    from mtkd.models.zoo import create_student

    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", default="animal-mnist,fashion-mnist")
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-loop-"))
    print(f"{args.model}, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} rounds, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    print(f"{'dataset':<15}{'loop':<26}{'img/s':>8}{'mtkd / loop':>13}")
    for name in args.datasets.split(","):
        ds = load_dataset(name)
        loops = {"mtkd": None, "hand: tensors + randperm": hand_tensor, "hand: DataLoader": hand_dataloader}
        times: dict[str, list[float]] = {k: [] for k in loops}
        for r in range(args.rounds):
            for label, fn in loops.items():
                torch.manual_seed(r)
                model = create_student(args.model, ds.num_classes, ds.channels)
                if fn is None:
                    secs = mtkd_loop(model, ds, args.epochs, args.batch_size, tmp / f"{name}-{r}")
                else:
                    secs = fn(model, ds, args.epochs, args.batch_size)
                times[label] += secs[1:]
        n = len(ds.train.labels) // args.batch_size * args.batch_size
        ips = {k: n / statistics.median(v) for k, v in times.items()}
        for label, value in ips.items():
            print(f"{name:<15}{label:<26}{value:>8.0f}{ips['mtkd'] / value:>13.2f}")


if __name__ == "__main__":
    main()

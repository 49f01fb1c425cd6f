"""A peer side by side: torchdistill and mtkd train the same student with KD from the same
teacher, on the same data, for the same epochs; epoch times and test accuracies.

    python benchmarks/bench_torchdistill.py [--teacher RUN] [--epochs 3] [--dataset animal-mnist]

The teacher is an mtkd-adapted one (default: runs/demo/teachers/mobilenet_v2 when it exists,
else one is adapted first: probe, 96 px, 10 epochs). Student cnn_small, batch 128, SGD
(lr 0.05, Nesterov momentum 0.9, weight decay 5e-4) with mtkd's warm-up + cosine schedule
stepped per iteration on both sides, loss = CE + 1.0 * T^2 * KL at T = 4 on both sides, no
augmentation (mtkd: crop_padding 0, hflip off, 1 cached view). torchdistill runs the teacher
at every step (its DistillationBox, DataLoader over a Dataset of normalised tensors); mtkd
computes the teacher's outputs once (the cache build is timed and reported separately).
torchdistill is a dev dependency (pyproject `dev` extra), used only here and in tests.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def mtkd_run(args: argparse.Namespace, teacher: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "mtkd", "train", "--dataset", args.dataset, "--model", "cnn_small",
           "--epochs", str(args.epochs), "--batch-size", "128", "--lr", "0.05", "--out", str(out),
           "--teachers", f"[{teacher}]", "--methods", "[{name: kd, temperature: 4, weight: 1.0}]",
           "--set", "transfer.views=1", "--set", "train.crop_padding=0", "--set", "train.hflip=off",
           "--set", "output.tensorboard=false", "--set", "output.progress=false"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    with open(out / "metrics.csv") as fh:
        seconds = [float(r["train_seconds"]) for r in csv.DictReader(fh)]
    summary = json.loads((out / "summary.json").read_text())
    return {
        "epoch_s": statistics.median(seconds[1:] or seconds),
        "test_acc": summary["test_acc_last"],
        "wall": wall,
    }


class _Normalised(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float]):
        m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
        self.x, self.y = (images.float() / 255 - m) / s, labels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class _TeacherOnStudentInput(torch.nn.Module):
    """The mtkd teacher takes [0, 1] images: undo the student's normalisation first."""

    def __init__(self, net: torch.nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.net = net
        self.register_buffer("m", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("s", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.s + self.m)


def torchdistill_run(args: argparse.Namespace, teacher_path: Path) -> dict:
    from torch.utils.data import RandomSampler
    from torchdistill.core.distillation import get_distillation_box

    from mtkd.data import load_dataset
    from mtkd.engine.builders import load_model
    from mtkd.engine.trainer import warmup_cosine
    from mtkd.models.zoo import create_student

    ds = load_dataset(args.dataset)
    net, _, _ = load_model(str(teacher_path), torch.device("cpu"))
    teacher = _TeacherOnStudentInput(net, ds.mean, ds.std).eval()
    torch.manual_seed(0)
    student = create_student("cnn_small", ds.num_classes, ds.channels)
    datasets = {"train": _Normalised(ds.train.images, ds.train.labels, ds.mean, ds.std)}
    kd = {"key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
          "teacher_module_path": ".", "teacher_module_io": "output", "temperature": 4.0, "alpha": 1.0,
          "beta": 1.0, "reduction": "batchmean"}}  # fmt: skip
    config = {
        "num_epochs": args.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": 128, "num_workers": 0, "drop_last": True}},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "sequential": [], "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": kd, "weight": 1.0}}}},
    }  # fmt: skip
    box = get_distillation_box(teacher, student, datasets, config, torch.device("cpu"), None, False, 1)
    steps = len(box.train_data_loader)
    box.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        box.optimizer, lambda s: warmup_cosine(s, steps * args.epochs, steps, 0.0)
    )
    box.scheduling_step = 1
    seconds = []
    for epoch in range(args.epochs):
        box.pre_epoch_process(epoch=epoch)
        start = time.perf_counter()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            if not math.isfinite(loss.item()):
                raise RuntimeError("torchdistill loss diverged")
            box.post_forward_process(loss)
        seconds.append(time.perf_counter() - start)
        box.post_epoch_process()
    test = _Normalised(ds.test.images, ds.test.labels, ds.mean, ds.std)
    student.eval()
    with torch.inference_mode():
        pred = torch.cat([student(test.x[i : i + 512]).argmax(1) for i in range(0, len(test), 512)])
    return {
        "epoch_s": statistics.median(seconds[1:] or seconds),
        "test_acc": (pred == test.y).float().mean().item(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="animal-mnist")
    ap.add_argument("--teacher", default="runs/demo/teachers/mobilenet_v2")
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mtkd-bench-td-"))
    teacher = Path(args.teacher)
    if not (teacher / "best.json").is_file():
        teacher = tmp / "teacher"
        subprocess.run([sys.executable, "-m", "mtkd", "teacher", "fit", "--dataset", args.dataset, "--teacher",
                        "mobilenet_v2", "--input-size", "96", "--epochs", "10", "--out", str(teacher)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env_home = tmp / "home"
    import os

    os.environ["MTKD_HOME"] = str(env_home)  # a cold cache: its build is part of mtkd's wall time
    ours = mtkd_run(args, teacher, tmp / "mtkd")
    peer = torchdistill_run(args, teacher)
    print(
        f"{args.dataset}, cnn_small, KD from {teacher}, {args.epochs} epochs, threads {torch.get_num_threads()}"
    )
    print(f"{'':<14}{'epoch s':>9}{'test acc':>10}")
    print(f"{'torchdistill':<14}{peer['epoch_s']:>9.2f}{peer['test_acc']:>10.4f}")
    print(f"{'mtkd':<14}{ours['epoch_s']:>9.2f}{ours['test_acc']:>10.4f}")
    print(f"epoch time torchdistill / mtkd: {peer['epoch_s'] / ours['epoch_s']:.1f}x; mtkd's whole run, cache "
          f"build and start-up included: {ours['wall']:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()

"""Photo-sized image folders: the dataset store against torchvision's ImageFolder, training from
the store against training in memory, and the memory a run holds while training from a store
larger than the memory it is given. Side by side in one run.

    python benchmarks/bench_data.py [--root /tmp/mtkd-bench-photos] [--images 60000] [--size 224]
        [--workers 2] [--train-size 64] [--epochs 2] [--limit-gib 2] [--rss-seconds 120]

1. The benchmark writes its own folder: Fashion-MNIST's 60,000 training and 10,000 test images
   (Debian's dataset-fashion-mnist), upscaled to --size, tinted with a random colour each and
   saved as JPEG (quality 90) in train/<class>/ and test/<class>/. Kept for later runs.
2. Store build, in an empty MTKD_HOME, the files first dropped from the page cache (as before the
   ImageFolder pass): headers read and every file decoded once into the store
   at --size (--workers processes), against one pass of `torchvision.datasets.ImageFolder` +
   `DataLoader(num_workers=--workers)` over the same files (PILToTensor, resized to --size).
   Then the time to open the finished store again.
3. Training images/s of cnn_small at --train-size (its own store), from the store on disk
   (`data.in_memory: false`) and in memory (`true`), --epochs each, epochs after the first.
4. Peak RSS of `mtkd train` from the --size store (`in_memory: false`), in a memory cgroup limited
   to --limit-gib (when this process may make one; else without a limit), stopped by SIGINT after
   --rss-seconds of training; the store's size beside it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def _write(task: tuple[str, np.ndarray, np.ndarray, int, int]) -> None:
    from PIL import Image

    folder, images, labels, first, size = task
    rng = np.random.default_rng(first)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        grey = (
            np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
        )
        tint, back = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.3, 3)
        rgb = (grey[..., None] * tint + (1 - grey[..., None]) * back) * 255
        Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(
            Path(folder) / CLASSES[y] / f"{first + i:05d}.jpg", quality=90
        )


def make_folder(root: Path, images: int, size: int, workers: int) -> None:
    marker = root / "done.json"
    wanted = {"images": images, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(root, ignore_errors=True)
    tasks = []
    for split, stem, n in (("train", "train", images), ("test", "t10k", max(1, images // 6))):
        x = _idx(FASHION / f"{stem}-images-idx3-ubyte.gz")[:n]
        y = _idx(FASHION / f"{stem}-labels-idx1-ubyte.gz")[:n]
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
        base = 0 if split == "train" else images
        tasks += [
            (str(root / split), x[s : s + 500], y[s : s + 500], base + s, size) for s in range(0, n, 500)
        ]
    began = time.perf_counter()
    with Pool(workers) as pool:
        pool.map(_write, tasks)
    marker.write_text(json.dumps(wanted))
    du = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    print(f"wrote {root}: {images} + {images // 6} JPEGs at {size}x{size}, {du / 2**30:.2f} GiB, "
          f"in {time.perf_counter() - began:.0f} s")  # fmt: skip


def evict(root: Path) -> None:
    """Drop the folder's files from the page cache (posix_fadvise DONTNEED; no root needed), so
    each pass reads them from disk as a first pass would, whichever ran before."""
    for path in root.rglob("*.jpg"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def imagefolder_pass(root: Path, size: int, workers: int) -> tuple[float, int]:
    import torch
    from torch.utils.data import ConcatDataset, DataLoader
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.Resize((size, size)), transforms.PILToTensor()])
    began, seen = time.perf_counter(), 0  # listing the folder is part of the pass, as for the store
    data = ConcatDataset([datasets.ImageFolder(root / s, tf) for s in ("train", "test")])
    for x, _ in DataLoader(data, batch_size=256, num_workers=workers):
        seen += len(x)
        assert x.dtype == torch.uint8
    return time.perf_counter() - began, seen


def store_build(root: Path, size: int) -> tuple[float, float, float]:
    from mtkd.data.folder import load_image_folder

    began = time.perf_counter()
    _, sets = load_image_folder(root, size, in_memory=False)
    built = time.perf_counter() - began
    began = time.perf_counter()
    load_image_folder(root, size, in_memory=False)
    reopened = time.perf_counter() - began
    return built, reopened, sum(s.images.nbytes for s in sets.values()) / 2**30


def train_ips(root: Path, size: int, epochs: int, in_memory: bool, out: Path) -> list[float]:
    import mtkd

    run = mtkd.train(
        "cnn_small", data=f"folder:{root}", image_size=size, in_memory=in_memory, epochs=epochs,
        out=out, progress=False, methods=["none"], teachers=[],
    )  # fmt: skip
    with open(Path(run) / "metrics.csv") as fh:
        return [float(row["train_ips"]) for row in csv.DictReader(fh)]


def _cgroup(limit: int) -> Path | None:
    base = Path("/sys/fs/cgroup/memory")
    folder = base / f"mtkd-bench-{os.getpid()}"
    try:
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(limit))
        return folder
    except OSError:
        return None


def peak_rss(root: Path, size: int, limit_gib: float, seconds: float, out: Path) -> tuple[float, str]:
    """Peak RSS (GiB) of `mtkd train` from the store on disk, and how it was limited."""
    group = _cgroup(int(limit_gib * 2**30))
    cmd = [sys.executable, "-m", "mtkd", "train", "--dataset", f"folder:{root}", "--set",
           f"data.image_size={size}", "--set", "data.in_memory=false", "--epochs", "1",
           "--set", "output.progress=false", "--output.dir", str(out)]  # fmt: skip
    pre = (lambda: (group / "cgroup.procs").write_text(str(os.getpid()))) if group else None
    proc = subprocess.Popen(cmd, preexec_fn=pre, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, began, training = 0, time.perf_counter(), None
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            peak = max(peak, int(fields["VmHWM"].split()[0]) * 1024)
        except (OSError, KeyError, ValueError):
            pass
        if training is None and (out / "config.yaml").exists():
            training = time.perf_counter()
        if training is not None and time.perf_counter() - training > seconds:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.2)
    output, _ = proc.communicate()
    for _ in range(50):  # the cgroup empties a moment after its last process ends
        try:
            if group is not None:
                group.rmdir()
            break
        except OSError:
            time.sleep(0.1)
    limited = f"memory cgroup limit {limit_gib} GiB" if group else "no limit (no memory cgroup here)"
    last = [line for line in output.splitlines() if line.strip()][-3:]
    print("  mtkd train said (last lines): " + " | ".join(last))
    print(f"  ran {time.perf_counter() - began:.0f} s, exit {proc.returncode}")
    return peak / 2**30, limited


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "mtkd-bench-photos")
    ap.add_argument("--images", type=int, default=60000)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit-gib", type=float, default=2.0)
    ap.add_argument("--rss-seconds", type=float, default=120)
    ap.add_argument("--skip", default="", help="comma-separated parts to skip: build,train,rss")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    make_folder(args.root, args.images, args.size, args.workers)
    home = Path(tempfile.mkdtemp(prefix="mtkd-bench-home-", dir=args.root.parent))
    os.environ["MTKD_HOME"] = str(home)
    try:
        if "build" not in skip:
            evict(args.root)
            built, reopened, gib = store_build(args.root, args.size)
            evict(args.root)
            folder_s, seen = imagefolder_pass(args.root, args.size, args.workers)
            print(f"store build at {args.size}px: {built:.1f} s ({seen / built:.0f} img/s, {gib:.2f} GiB); "
                  f"ImageFolder + DataLoader pass ({args.workers} workers): {folder_s:.1f} s ({seen / folder_s:.0f} img/s); "
                  f"ratio ImageFolder/store {folder_s / built:.2f}x; reopening the store: {reopened:.1f} s")  # fmt: skip
        if "train" not in skip:
            runs = Path(tempfile.mkdtemp(prefix="mtkd-bench-runs-", dir=args.root.parent))
            from mtkd.data.folder import load_image_folder

            load_image_folder(args.root, args.train_size, in_memory=False)  # built before timing
            disk = train_ips(args.root, args.train_size, args.epochs, False, runs / "disk")
            memory = train_ips(args.root, args.train_size, args.epochs, True, runs / "memory")
            d, m = disk[1:] or disk, memory[1:] or memory
            print(f"training cnn_small at {args.train_size}px, images/s per epoch: from the store on disk "
                  f"{[round(v) for v in disk]}, in memory {[round(v) for v in memory]}; "
                  f"ratio disk/memory {np.median(d) / np.median(m):.3f}x (epochs after the first)")  # fmt: skip
            shutil.rmtree(runs)
        if "rss" not in skip:
            out = Path(tempfile.mkdtemp(prefix="mtkd-bench-rss-", dir=args.root.parent)) / "run"
            gib = sum(p.stat().st_size for p in (home / "stores").rglob("images.npy")) / 2**30
            peak, limited = peak_rss(args.root, args.size, args.limit_gib, args.rss_seconds, out)
            print(f"training from the {args.size}px store on disk ({gib:.2f} GiB of stores, {limited}): "
                  f"peak RSS {peak:.2f} GiB")  # fmt: skip
            shutil.rmtree(out.parent)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Image-folder datasets: ROOT/train/<class>/*.png with ROOT/val/ and/or ROOT/test/ beside it,
decoded once into a dataset store (mtkd.data.store)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from mtkd.data.base import ImageSet
from mtkd.data.images import IMAGE_SUFFIXES
from mtkd.data.store import folder_store, memory_available, read_headers
from mtkd.errors import MtkdError


def _class_files(split_dir: Path) -> dict[str, list[Path]]:
    classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise MtkdError(f"no class folders in {split_dir}")
    files = {}
    for cls in classes:
        found = sorted(p for p in cls.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise MtkdError(f"class folder has no images: {cls}")
        files[cls.name] = found
    return files


def find_splits(root: Path) -> dict[str, Path]:
    """Which of train/val/test exist under root; train and one of val/test are required."""
    if not root.is_dir():
        raise MtkdError(f"image folder not found: {root}")
    splits = {s: root / s for s in ("train", "val", "test") if (root / s).is_dir()}
    if "train" not in splits or not ({"val", "test"} & splits.keys()):
        raise MtkdError(
            f"image folder {root} needs a train/ folder and a val/ or test/ folder of class subfolders"
        )
    return splits


def load_image_folder(
    root: Path, image_size: int | None, in_memory: bool | str = "auto"
) -> tuple[list[str], dict[str, ImageSet]]:
    """Every split's images, decoded once into a dataset store (mtkd.data.store), then copied into
    memory or read from the store batch by batch (`in_memory`: True, False, or "auto": in memory
    when every split together takes under a quarter of the memory this process may use).

    Grey if every image is grey, else RGB; resized to `image_size` squared, or to the most common
    size in train/ when unset (both read from the files' headers).
    """
    splits = find_splits(root)
    per_split = {name: _class_files(path) for name, path in splits.items()}
    classes = list(per_split["train"])
    for name, files in per_split.items():
        if list(files) != classes:
            raise MtkdError(f"class folders of {splits[name]} differ from those of {splits['train']}")
    listed = {
        name: [(p, y) for y, cls in enumerate(classes) for p in files[cls]]
        for name, files in per_split.items()
    }
    every = [p for items in listed.values() for p, _ in items]
    headers = dict(zip(every, read_headers(every, f"{root.name}: reading image headers"), strict=True))
    channels = 1 if all(grey for _, _, grey in headers.values()) else 3
    if image_size:
        size = (image_size, image_size)
    else:
        (w, h), _ = Counter(headers[p][:2] for p, _ in listed["train"]).most_common(1)[0]
        size = (h, w)
    stored = {
        name: folder_store(
            root, [p for p, _ in items], [y for _, y in items], channels, size, f"{root.name}/{name}"
        )
        for name, items in listed.items()
    }
    if in_memory == "auto":
        in_memory = sum(images.nbytes for images, _ in stored.values()) < memory_available() // 4
    return classes, {
        name: ImageSet(
            images[:] if in_memory else images, torch.from_numpy(labels), [str(p) for p, _ in listed[name]]
        )
        for name, (images, labels) in stored.items()
    }

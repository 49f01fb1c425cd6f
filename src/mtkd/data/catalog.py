"""The named datasets mtkd knows, where each is found, and `load_dataset` for all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from mtkd.data import sources
from mtkd.data.base import Dataset, ImageSet, carve_validation
from mtkd.data.convert import as_dataset
from mtkd.data.folder import find_splits, load_image_folder
from mtkd.data.store import array_store, memory_available
from mtkd.errors import MtkdError
from mtkd.registry import Registry, short_doc


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    summary: str
    classes: int
    sizes: str
    hflip: bool
    read: Callable
    locate: Callable[[Path | None], str | None]  # where it is on disk, None when it is not


def _torchvision_entry(name: str, summary: str, classes: int, sizes: str, hflip: bool) -> DatasetEntry:
    def locate(data_dir: Path | None) -> str | None:
        return (
            str(sources.torchvision_root(data_dir)) if sources.torchvision_present(name, data_dir) else None
        )

    return DatasetEntry(name, summary, classes, sizes, hflip, partial(sources.read_torchvision, name), locate)


def _locate_animal_mnist(data_dir: Path | None) -> str | None:
    files = sources.animal_mnist_files()
    return str(files[0].parent) if files else None


def _locate_fashion_mnist(data_dir: Path | None) -> str | None:
    folder = sources.fashion_mnist_dir(data_dir)
    return str(folder) if folder else None


DATASETS: Registry[DatasetEntry | Callable[[], Any]] = Registry("dataset", "mtkd.datasets")
for _entry in [
        DatasetEntry(
            "animal-mnist", "animal silhouettes, 28x28 grey (duplicates removed, 80/20 saved split)", 10,
            "7772 train / 1944 test", True, sources.read_animal_mnist,
            _locate_animal_mnist,
        ),
        DatasetEntry(
            "fashion-mnist", "Zalando clothing, 28x28 grey, official split", 10, "60000 train / 10000 test",
            True, sources.read_fashion_mnist, _locate_fashion_mnist,
        ),
        DatasetEntry(
            "digits", "scikit-learn handwritten digits, 8x8 grey (for fast tests)", 10, "1347 train / 450 test",
            False, sources.read_digits, lambda d: "scikit-learn",
        ),
        _torchvision_entry("cifar10", "CIFAR-10, 32x32 colour", 10, "50000 train / 10000 test", True),
        _torchvision_entry("cifar100", "CIFAR-100, 32x32 colour", 100, "50000 train / 10000 test", True),
        _torchvision_entry("svhn", "street-view house numbers, 32x32 colour", 10, "73257 train / 26032 test", False),
        _torchvision_entry("stl10", "STL-10 labelled part, 96x96 colour", 10, "5000 train / 8000 test", True),
]:  # fmt: skip
    DATASETS.register(_entry.name, _entry)


def register_dataset(name: str, make: Callable[[], Any], origin: str = "python") -> None:
    """Make a dataset available by `name`: `make()` returns an mtkd Dataset (mtkd.data.from_tensors,
    from_torch), a (train, test) pair or a {train:, test:, val:, classes:} mapping of torch Datasets.
    Entry points in the `mtkd.datasets` group do the same for a pip-installed package."""
    DATASETS.register(name, make, origin)


def _plugin_dataset(name: str, val_fraction: float, split_seed: int) -> Dataset:
    make = DATASETS[name]
    try:
        made = make()
    except MtkdError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, named in one line
        raise MtkdError(f"dataset plugin '{name}' failed: {type(exc).__name__}: {exc}") from None
    dataset = as_dataset(made, name, val_fraction, split_seed)
    dataset.name = name
    return dataset


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    download: bool = True,
    image_size: int | None = None,
    in_memory: bool | str = "auto",
) -> Dataset:
    """Load a named dataset or `folder:PATH` with train / val / test splits.

    An image folder is decoded once into a dataset store, and held in memory or read from disk
    batch by batch (`in_memory`: True, False, or "auto": in memory when all its splits take under a
    quarter of the memory this process may use). A named dataset is read into memory; with
    `in_memory` False (or "auto" and too large) it is written once into a store and read from it.

    The validation split is carved from train (stratified, seeded by `split_seed`) unless
    the source has its own; the test split is never touched by training.
    """
    data_dir = Path(data_dir) if data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise MtkdError(f"data directory not found: {data_dir}")
    if name.startswith("folder:"):
        root = Path(name.removeprefix("folder:")).expanduser()
        classes, splits = load_image_folder(root, image_size, in_memory)
        source, hflip = f"image folder {root}", True
        if "test" not in splits:  # val/ only: it is the held-out split; validation comes from train
            splits["test"] = splits.pop("val")
    elif name in DATASETS:
        entry = DATASETS[name]
        if not isinstance(entry, DatasetEntry):
            return _plugin_dataset(name, val_fraction, split_seed)
        classes, splits, source = entry.read(data_dir, download)
        hflip = entry.hflip
        nbytes = sum(part.images.numel() for part in splits.values())
        if in_memory is False or (in_memory == "auto" and nbytes >= memory_available() // 4):
            splits = {
                k: ImageSet(array_store(part.images, part.labels, f"{name}/{k}"), part.labels)
                for k, part in splits.items()
            }
    else:
        raise MtkdError(_unknown(name))
    if "val" not in splits:
        splits["train"], splits["val"] = carve_validation(splits["train"], val_fraction, split_seed)
    return Dataset(name, classes, splits["train"], splits["val"], splits["test"], hflip, source)


def check_dataset(
    name: str, data_dir: Path | str | None = None, download: bool = True
) -> None:  # fmt: skip
    """Raise the one-line error `load_dataset` would, without reading the images: for checking
    every run of a study before any of them starts."""
    data_dir = Path(data_dir) if data_dir else None
    if data_dir is not None and not data_dir.is_dir():
        raise MtkdError(f"data directory not found: {data_dir}")
    if name.startswith("folder:"):
        find_splits(Path(name.removeprefix("folder:")).expanduser())
        return
    if name not in DATASETS:
        raise MtkdError(_unknown(name))
    if not isinstance(DATASETS[name], DatasetEntry):
        return
    downloads = download and (name in sources.TORCHVISION_SETS or name == "fashion-mnist")
    if DATASETS[name].locate(data_dir) is None and not downloads:
        raise MtkdError(f"dataset '{name}' is not available here (see `mtkd datasets`)")


def plugin_named(dataset: Dataset, val_fraction: float, split_seed: int) -> str | None:
    """The name of the installed dataset plugin that gives exactly this data (same images, labels
    and splits), if one does: data given from Python is then recorded by that name, so a fresh
    process finds it again. Only plugins (entry points) are asked."""
    fingerprint = dataset.fingerprint()
    for name in DATASETS.names():
        if not DATASETS.origin(name).startswith("plugin") or isinstance(DATASETS[name], DatasetEntry):
            continue
        try:
            if _plugin_dataset(name, val_fraction, split_seed).fingerprint() == fingerprint:
                return name
        except MtkdError:
            continue
    return None


def _unknown(name: str) -> str:
    return f"unknown dataset '{name}' (known: {', '.join(DATASETS.names())}, or folder:PATH)"


def describe_datasets(data_dir: Path | None = None) -> list[dict]:
    """One row per known dataset: what it is and whether it is available here."""
    rows = []
    for name, entry in DATASETS.items():
        if not isinstance(entry, DatasetEntry):
            rows.append({"name": name, "classes": "?", "sizes": "?", "summary": short_doc(entry),
                         "available": True, "where": DATASETS.origin(name)})  # fmt: skip
            continue
        where = entry.locate(data_dir)
        online = entry.name in sources.TORCHVISION_SETS or entry.name == "fashion-mnist"
        rows.append(
            {
                "name": entry.name,
                "classes": entry.classes,
                "sizes": entry.sizes,
                "summary": entry.summary,
                "available": where is not None,
                "where": where or ("downloads when online" if online else "not installed"),
            }
        )
    return rows

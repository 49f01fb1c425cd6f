"""Readers for the named datasets: Animal-MNIST, Fashion-MNIST, digits and torchvision's sets.

Each reader returns (classes, {"train": ImageSet, "test": ImageSet, maybe "val"}, source).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch

from mtkd.data.base import ImageSet, deduplicate, stratified_split, to_nchw_uint8
from mtkd.errors import MtkdError
from mtkd.io import cache_dir, read_json, write_json

Splits = dict[str, ImageSet]

ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION_CLASSES = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
ANIMAL_TEST_FRACTION = 0.2
ANIMAL_SPLIT_SEED = 0


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


# ---- Animal-MNIST ---------------------------------------------------------------------------


def animal_mnist_files() -> tuple[Path, Path] | None:
    pkg = _package_dir("animal_mnist")
    if pkg is None:
        return None
    folder = pkg / "data" / "Animal_MNIST"
    data, labels = folder / "animal_data_version_3.gz", folder / "animal_label_version_3.gz"
    return (data, labels) if data.is_file() and labels.is_file() else None


def _load_pickle_array(path: Path) -> np.ndarray:
    # The package ships gzip pickles of plain numpy arrays; refuse anything else.
    class _ArraysOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str):  # noqa: ANN202
            if module.startswith("numpy") and name in {
                "_reconstruct",
                "ndarray",
                "dtype",
                "scalar",
                "_frombuffer",
            }:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {path}")

    with gzip.open(path, "rb") as fh:
        return np.asarray(_ArraysOnly(fh).load())


def read_animal_mnist(data_dir: Path | None, download: bool) -> tuple[list[str], Splits, str]:
    files = animal_mnist_files()
    if files is None:
        raise MtkdError("animal-mnist not found: pip install --no-deps animal-mnist==0.4")
    images, labels = _load_pickle_array(files[0]), _load_pickle_array(files[1]).astype(np.int64)
    keep = deduplicate(images, labels)
    images, labels = images[keep], labels[keep]
    test_index = _saved_animal_split(images, labels)
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_index] = True
    x, y = to_nchw_uint8(images), torch.from_numpy(labels)
    splits = {
        "train": ImageSet(x[~is_test], y[~is_test]),
        "test": ImageSet(x[is_test], y[is_test]),
    }
    return ANIMAL_CLASSES, splits, f"pip package animal-mnist ({files[0].parent}), {len(keep)} unique images"


def _saved_animal_split(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The fixed test split, saved once so every run and every machine uses the same one."""
    content = hashlib.blake2b(images.tobytes() + labels.tobytes(), digest_size=16).hexdigest()
    path = cache_dir() / "splits" / "animal-mnist.json"
    if path.is_file():
        try:
            saved = read_json(path)
            if saved.get("content") == content:
                return np.asarray(saved["test"], dtype=np.int64)
        except (ValueError, KeyError, OSError, MtkdError):
            pass  # unreadable: rebuilt below
    _, test = stratified_split(labels, ANIMAL_TEST_FRACTION, ANIMAL_SPLIT_SEED)
    write_json(
        path,
        {
            "content": content,
            "fraction": ANIMAL_TEST_FRACTION,
            "seed": ANIMAL_SPLIT_SEED,
            "test": test.tolist(),
        },
    )
    return test


# ---- Fashion-MNIST ----------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) as a numpy array; see the MNIST file format."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise MtkdError(f"not an unsigned-byte IDX file: {path}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise MtkdError(f"IDX file is truncated or corrupt: {path}")
    return data.reshape(dims)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_dir(data_dir: Path | None) -> Path | None:
    candidates = []
    if data_dir is not None:
        candidates += [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist"]
    candidates += [cache_dir() / "datasets" / "FashionMNIST" / "raw", FASHION_SYSTEM_DIR]
    for folder in candidates:
        if all(
            _idx_file(folder, f"{s}-{k}")
            for s in ("train", "t10k")
            for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ):
            return folder
    return None


def read_fashion_mnist(data_dir: Path | None, download: bool) -> tuple[list[str], Splits, str]:
    folder = fashion_mnist_dir(data_dir)
    if folder is None and download:
        root = data_dir or cache_dir() / "datasets"
        try:
            import torchvision

            torchvision.datasets.FashionMNIST(str(root), download=True)
        except Exception as exc:  # noqa: BLE001 - any download failure means the same thing here
            raise MtkdError(
                f"fashion-mnist not found (apt-get install dataset-fashion-mnist, or IDX files in --data-dir) "
                f"and the download failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        folder = fashion_mnist_dir(root)
    if folder is None:
        raise MtkdError(
            "fashion-mnist not found: apt-get install dataset-fashion-mnist, or put its IDX files in --data-dir"
        )
    splits = {}
    for split, stem in (("train", "train"), ("test", "t10k")):
        x = read_idx(_idx_file(folder, f"{stem}-images-idx3-ubyte"))
        y = read_idx(_idx_file(folder, f"{stem}-labels-idx1-ubyte")).astype(np.int64)
        splits[split] = ImageSet(to_nchw_uint8(x), torch.from_numpy(y))
    return FASHION_CLASSES, splits, f"IDX files in {folder}"


# ---- scikit-learn digits ----------------------------------------------------------------------


def read_digits(data_dir: Path | None, download: bool) -> tuple[list[str], Splits, str]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, 0.25, 0)
    x, y = to_nchw_uint8(images), torch.from_numpy(labels)
    splits = {"train": ImageSet(x[train], y[train]), "test": ImageSet(x[test], y[test])}
    return [str(i) for i in range(10)], splits, "scikit-learn load_digits()"


# ---- torchvision datasets (CIFAR-10/100, SVHN, STL10) ----------------------------------------

TORCHVISION_SETS = {
    # name: (torchvision class, folder it creates, how splits are named)
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "train_flag"),
    "cifar100": ("CIFAR100", "cifar-100-python", "train_flag"),
    "svhn": ("SVHN", "train_32x32.mat", "split"),
    "stl10": ("STL10", "stl10_binary", "split"),
}


def torchvision_root(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else cache_dir() / "datasets"


def torchvision_present(name: str, data_dir: Path | None) -> bool:
    return (torchvision_root(data_dir) / TORCHVISION_SETS[name][1]).exists()


def read_torchvision(name: str, data_dir: Path | None, download: bool) -> tuple[list[str], Splits, str]:
    import torchvision

    cls_name, _, style = TORCHVISION_SETS[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = torchvision_root(data_dir)
    fetch = download and not torchvision_present(name, data_dir)
    splits, classes = {}, None
    for split in ("train", "test"):
        kwargs = {"train": split == "train"} if style == "train_flag" else {"split": split}
        try:
            ds = cls(str(root), download=fetch, **kwargs)
        except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError or URLError
            hint = "and the download failed" if fetch else "(download disabled)"
            raise MtkdError(f"{name} not found under {root} {hint}: {str(exc).splitlines()[0]}") from None
        labels = np.asarray(getattr(ds, "targets", None) or ds.labels, dtype=np.int64)
        splits[split] = ImageSet(to_nchw_uint8(np.asarray(ds.data)), torch.from_numpy(labels))
        classes = list(getattr(ds, "classes", None) or [str(i) for i in range(10)])
    return classes, splits, f"torchvision {cls_name} files in {root}"

"""Your own data as an mtkd Dataset: tensors or arrays, any torch Dataset of (image, label) pairs.

mtkd holds images as uint8 [N, C, H, W] (a quarter of float32's memory, and the teacher cache's
content key). Float images are taken as pixels in [0, 1] (torchvision's ToTensor) or [0, 255]
and rounded to the nearest of 256 levels; normalised images (negative values) are refused,
since mtkd normalises with the training split's statistics itself. Images may come as
[N, C, H, W], [N, H, W] (grey) or [N, H, W, C]; PIL images of other sizes are resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtkd.data.base import Dataset, ImageSet, carve_validation
from mtkd.data.images import image_to_tensor
from mtkd.errors import MtkdError

PYTHON_DATA = "tensors"  # the name a run records for data given from Python without a name


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    """A tensor or array-like as a CPU tensor; anything else (strings, None, ragged lists) in one line."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if x is None or isinstance(x, (str, bytes, dict)):
        raise MtkdError(f"{what} must be a tensor or an array, got {type(x).__name__}")
    try:
        a = np.asarray(x)
        if a.dtype == object or a.dtype.kind in "USV":
            raise TypeError(a.dtype)
        return torch.as_tensor(a)
    except (TypeError, ValueError, RuntimeError):
        raise MtkdError(f"{what} must be numbers (a tensor or an array), got {type(x).__name__}") from None


def to_uint8_images(x: Any, what: str = "images") -> torch.Tensor:
    """A batch of images (tensor or array; uint8, or float in [0, 1] or [0, 255]) as uint8 [N, C, H, W]."""
    t = _as_tensor(x, what)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise MtkdError(f"{what} must be [N, C, H, W], [N, H, W] or [N, H, W, C], got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise MtkdError(f"{what} must have 1 (grey) or 3 (colour) channels, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise MtkdError(f"{what} hold no images (shape {tuple(t.shape)})")
    if t.dtype == torch.uint8:
        return t.contiguous()
    if t.dtype == torch.bool or not (
        t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)
    ):
        raise MtkdError(f"{what}: unsupported dtype {t.dtype} (uint8, or floats in [0, 1] or [0, 255])")
    t = t.float()
    if not torch.isfinite(t).all():
        raise MtkdError(f"{what} hold NaN or infinite values")
    low, high = float(t.min()), float(t.max())
    if low < 0:
        raise MtkdError(
            f"{what} have negative values (min {low:.3g}): they look normalised; give pixels in [0, 1] "
            "or [0, 255] (mtkd normalises with the training split's statistics)"
        )
    if high > 255:
        raise MtkdError(f"{what} exceed 255 (max {high:.3g}): give pixels in [0, 1] or [0, 255]")
    scale = 255.0 if high <= 1.0 and t.is_floating_point() else 1.0
    return (t * scale).round_().clamp_(0, 255).to(torch.uint8).contiguous()


def to_labels(y: Any, n: int, what: str = "labels") -> torch.Tensor:
    """Class indices as int64: whole, finite, >= 0 (floats such as 3.0 are taken, 0.5 refused)."""
    t = _as_tensor(y, what)
    if t.ndim != 1 or len(t) != n:
        raise MtkdError(f"{what} must be a vector of {n} class indices, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise MtkdError(f"{what} must be class indices (integers), got dtype {t.dtype}")
    if t.is_floating_point():
        if not torch.isfinite(t).all():
            raise MtkdError(f"{what} hold NaN or infinite values")
        if not torch.equal(t, t.round()):
            raise MtkdError(
                f"{what} must be whole class indices, got floats such as {t[t != t.round()][0]:.3g}"
            )
        if len(t) and float(t.abs().max()) >= 2**53:
            raise MtkdError(
                f"{what} must be class indices, got values as large as {float(t.abs().max()):.3g}"
            )
        t = t.round()
    if len(t) and int(t.min()) < 0:
        raise MtkdError(f"{what} must be class indices >= 0, got {int(t.min())}")
    return t.long()


def _classes(given: Sequence[str] | None, labels: list[torch.Tensor]) -> list[str]:
    """Class names: `given` (one per index, each once) or "0".."K-1" for labels 0..K-1. Checked
    before anything allocates per class: a label far above the classes present is refused."""
    present = [y for y in labels if len(y)]
    if not present:
        raise MtkdError("no labels: every split is empty")
    top = max(int(y.max()) for y in present) + 1
    if given is None:
        distinct = int(torch.unique(torch.cat(present)).numel())
        if top > distinct:
            raise MtkdError(
                f"labels go up to {top - 1} but only {distinct} distinct values appear: labels must be class "
                "indices 0..K-1 (pass classes= to name K classes when some have no image)"
            )
        return [str(i) for i in range(top)]
    try:
        if isinstance(given, (str, bytes)):
            raise TypeError
        classes = [str(c) for c in given]
    except TypeError:
        raise MtkdError(f"classes must be a list of class names, got {type(given).__name__}") from None
    if top > len(classes):
        raise MtkdError(f"labels go up to {top - 1} but {len(classes)} classes are named")
    seen: set[str] = set()
    for c in classes:
        if c in seen:
            raise MtkdError(f"class name {c!r} is given twice: class names must differ")
        seen.add(c)
    return classes


def from_tensors(
    x_train: Any, y_train: Any, x_test: Any, y_test: Any, *, classes: Sequence[str] | None = None,
    x_val: Any = None, y_val: Any = None, name: str = PYTHON_DATA, hflip: bool = True,
    val_fraction: float = 0.1, split_seed: int = 0,
) -> Dataset:  # fmt: skip
    """A Dataset from image tensors (or arrays) and labels; validation is carved from train
    (stratified, seeded) unless given. `name` is what runs record: the name of a dataset plugin
    lets `mtkd evaluate` find the data again in a fresh process."""
    train = ImageSet(to_uint8_images(x_train, "x_train"), to_labels(y_train, len(x_train), "y_train"))
    test = ImageSet(to_uint8_images(x_test, "x_test"), to_labels(y_test, len(x_test), "y_test"))
    if (x_val is None) != (y_val is None):
        raise MtkdError("give both x_val and y_val, or neither")
    names = _classes(classes, [train.labels, test.labels])
    if x_val is not None:
        val = ImageSet(to_uint8_images(x_val, "x_val"), to_labels(y_val, len(x_val), "y_val"))
    else:
        train, val = carve_validation(train, val_fraction, split_seed)
    sets = {"train": train, "val": val, "test": test}
    shapes = {k: tuple(s.images.shape[1:]) for k, s in sets.items()}
    if len(set(shapes.values())) > 1:
        raise MtkdError(f"splits differ in image shape: {shapes}")
    for key, s in sets.items():
        if len(s) == 0:
            raise MtkdError(f"the {key} split is empty")
    if x_val is not None:
        names = _classes(names, [val.labels])
    return Dataset(name, names, train, val, test, hflip, "given from Python")


def _items(data: Any, what: str, size: tuple[int, int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, label) pair of a map-style torch Dataset (or any sequence of pairs), read once."""
    try:
        n = len(data)
    except TypeError:
        raise MtkdError(f"{what}: a torch Dataset with a length (map-style) is needed") from None
    images, labels, channels = [], [], None
    for i in range(n):
        item = data[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise MtkdError(f"{what}[{i}] is not an (image, label) pair")
        img, label = item[0], item[1]
        if isinstance(img, Image.Image):
            if channels is None:
                channels = 1 if img.mode in ("1", "L", "LA", "I", "I;16", "F") else 3
            if size is None:
                size = (img.height, img.width)
            t = image_to_tensor(img, channels, size)
        else:
            t = to_uint8_images(torch.as_tensor(np.asarray(img))[None], f"{what}[{i}]")[0]
            if size is not None and tuple(t.shape[1:]) != size:
                raise MtkdError(f"{what}[{i}] is {tuple(t.shape[1:])} but the first image is {size}")
            size = (int(t.shape[1]), int(t.shape[2]))
        images.append(t)
        labels.append(_label(label, f"{what}[{i}]"))
    if not images:
        raise MtkdError(f"{what} is empty")
    if len({tuple(t.shape) for t in images}) > 1:
        raise MtkdError(f"{what}: images differ in shape (channels or size)")
    return torch.stack(images), torch.tensor(labels)


def _label(label: Any, what: str) -> int:
    """One item's label as a class index: a whole number (an int, or a float or 0-d tensor equal to one)."""
    t = _as_tensor(label, f"{what}'s label")
    if t.numel() != 1:
        raise MtkdError(f"{what}'s label must be one class index, got shape {tuple(t.shape)}")
    return int(to_labels(t.reshape(1), 1, f"{what}'s label")[0])


def from_torch(
    train: Any, test: Any, *, val: Any = None, classes: Sequence[str] | None = None, name: str = PYTHON_DATA,
    hflip: bool = True, val_fraction: float = 0.1, split_seed: int = 0,
) -> Dataset:  # fmt: skip
    """A Dataset from torch Datasets of (image, label) pairs: PIL images (resized to the first
    one's size) or tensors/arrays, uint8 or float. They are read once into memory."""
    x_train, y_train = _items(train, "train", None)
    size = (int(x_train.shape[2]), int(x_train.shape[3]))
    x_test, y_test = _items(test, "test", size)
    x_val = y_val = None
    if val is not None:
        x_val, y_val = _items(val, "val", size)
    if classes is None:
        classes = getattr(train, "classes", None)
    return from_tensors(
        x_train, y_train, x_test, y_test, classes=classes, x_val=x_val, y_val=y_val, name=name, hflip=hflip,
        val_fraction=val_fraction, split_seed=split_seed,
    )  # fmt: skip


def as_dataset(obj: Any, name: str, val_fraction: float = 0.1, split_seed: int = 0) -> Dataset:
    """What a dataset plugin (or `mtkd.train(data=...)`) gives, as a Dataset: a Dataset; a mapping
    with 'train' and 'test' (and maybe 'val', 'classes', 'hflip') torch Datasets; or a pair
    (train, test) of torch Datasets."""
    if isinstance(obj, Dataset):
        return obj
    if isinstance(obj, dict) and "train" in obj and "test" in obj:
        return from_torch(
            obj["train"], obj["test"], val=obj.get("val"), classes=obj.get("classes"), name=name,
            hflip=obj.get("hflip", True), val_fraction=val_fraction, split_seed=split_seed,
        )  # fmt: skip
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return from_torch(obj[0], obj[1], name=name, val_fraction=val_fraction, split_seed=split_seed)
    raise MtkdError(
        f"dataset '{name}': expected an mtkd Dataset (mtkd.data.from_tensors / from_torch), a (train, test) "
        f"pair or a {{train:, test:}} mapping of torch Datasets, got {type(obj).__name__}"
    )

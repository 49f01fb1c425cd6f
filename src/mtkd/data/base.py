"""Image sets (uint8 tensors in memory, or rows of a dataset store on disk), deduplication and seeded
stratified splits."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mtkd.errors import MtkdError

if TYPE_CHECKING:
    from mtkd.data.store import StoredImages


Images = Union[torch.Tensor, "StoredImages"]


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W] (a tensor, or a store's rows read when indexed) and integer labels [N]."""

    images: Images
    labels: torch.Tensor
    files: list[str] | None = None  # the image files the rows were decoded from (an image folder)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 [N,C,H,W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray | torch.Tensor) -> ImageSet:
        index = torch.as_tensor(index, dtype=torch.long)
        files = None if self.files is None else [self.files[i] for i in index.tolist()]
        if isinstance(self.images, torch.Tensor):
            return ImageSet(self.images[index], self.labels[index], files)
        return ImageSet(self.images.subset(index.numpy()), self.labels[index], files)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, torch.Tensor)


@dataclass
class Dataset:
    """A dataset ready for training: train / val / test splits and what describes them."""

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    hflip: bool
    source: str
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise MtkdError(
                f"dataset '{self.name}' has {len(self.classes)} class(es) ({', '.join(self.classes) or 'none'}): "
                "a classifier needs at least 2"
            )
        if not self.mean:
            self.mean, self.std = channel_stats(self.train.images)
        if any(not s > 1e-3 for s in self.std):  # channel_stats' floor: no pixel differs, or nearly none
            raise MtkdError(
                f"dataset '{self.name}': the training images are constant (pixel std {max(self.std):.3g} at most, "
                "in [0, 1]): nothing to learn"
            )

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise MtkdError(f"unknown split '{name}' (allowed: train, val, test)")
        return getattr(self, name)

    def fingerprint(self) -> str:
        """A hash of every split's images and labels (the same data, split the same way)."""
        digest = hashlib.blake2b(digest_size=16)
        for part in (self.train, self.val, self.test):
            digest.update(images_digest(part.images).encode())
            digest.update(part.labels.numpy().tobytes())
        return digest.hexdigest()

    def meta(self) -> dict:
        """What a checkpoint records about its data, enough to rebuild inputs for prediction."""
        return {
            "name": self.name,
            "classes": self.classes,
            "channels": self.channels,
            "image_size": list(self.image_size),
            "mean": self.mean,
            "std": self.std,
            "sizes": {s: len(self.split(s)) for s in ("train", "val", "test")},
        }


def chunks(images: Images, pixels: int = 1 << 24) -> Iterator[torch.Tensor]:
    """Every image in order, as uint8 tensors of about `pixels` values each."""
    rows = max(1, pixels // max(1, math.prod(images.shape[1:])))
    for start in range(0, len(images), rows):
        yield images[start : start + rows]


def _memo(images: Images, what: str, compute: Callable[[], Any]) -> Any:
    return compute() if isinstance(images, torch.Tensor) else images.memo(what, compute)


def images_digest(images: Images) -> str:
    """BLAKE2b of the images' bytes in order (the same for a tensor and a store holding them)."""

    def compute() -> str:
        digest = hashlib.blake2b(digest_size=16)
        for chunk in chunks(images):
            digest.update(chunk.contiguous().numpy().tobytes())
        return digest.hexdigest()

    return _memo(images, "digest", compute)


def channel_stats(images: Images) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) standard deviation of the pixels in [0, 1], from exact integer
    sums, so they do not depend on how the images are read; the deviation is at least 1e-3."""

    def compute() -> list[list[float]]:
        counts = torch.zeros(images.shape[1], 256, dtype=torch.int64)
        for chunk in chunks(images):
            for c in range(counts.shape[0]):
                counts[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256)
        values = torch.arange(256, dtype=torch.int64)
        mean, std = [], []
        for row in counts:
            n, s, q = int(row.sum()), int((row * values).sum()), int((row * values * values).sum())
            mean.append(s / n / 255)
            var = (n * q - s * s) / (n * max(1, n - 1)) / 255**2
            std.append(max(math.sqrt(max(var, 0.0)), 1e-3))
        return [mean, std]

    mean, std = _memo(images, "stats", compute)
    return mean, std


def image_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.blake2b(img.tobytes(), digest_size=16).hexdigest() for img in images]


def deduplicate(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of the images to keep: the first copy of each exact duplicate.

    An image that appears with two different labels is ambiguous, so every copy is dropped.
    """
    first: dict[str, int] = {}
    label_of: dict[str, int] = {}
    conflicting: set[str] = set()
    for i, (h, y) in enumerate(zip(image_hashes(images), labels, strict=True)):
        if h not in first:
            first[h], label_of[h] = i, int(y)
        elif label_of[h] != int(y):
            conflicting.add(h)
    return np.array(sorted(i for h, i in first.items() if h not in conflicting), dtype=np.int64)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices 0..N-1 into (rest, part) with `fraction` of each class in `part`, seeded."""
    index = np.arange(len(labels))
    try:
        rest, part = train_test_split(index, test_size=fraction, stratify=labels, random_state=seed)
    except ValueError as exc:
        raise MtkdError(f"cannot make a stratified split of {len(labels)} images ({exc})") from None
    return np.sort(rest), np.sort(part)


def carve_validation(train: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split a training set into (train, val), stratified and seeded."""
    rest, val = stratified_split(train.labels.numpy(), fraction, seed)
    return train.subset(rest), train.subset(val)


def to_nchw_uint8(images: np.ndarray) -> torch.Tensor:
    """[N,H,W] or [N,H,W,C] uint8 arrays to a contiguous uint8 [N,C,H,W] tensor."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))

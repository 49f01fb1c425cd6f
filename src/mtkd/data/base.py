"""In-memory image sets, deduplication and seeded stratified splits."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from mtkd.errors import MtkdError


@dataclass
class ImageSet:
    """Images as uint8 [N, C, H, W] and integer labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor

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
        return ImageSet(self.images[index], self.labels[index])


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
        if not self.mean:
            pixels = self.train.images.float().div_(255).transpose(0, 1).reshape(self.channels, -1)
            self.mean = pixels.mean(1).tolist()
            self.std = pixels.std(1).clamp_min(1e-3).tolist()

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
            digest.update(part.images.numpy().tobytes())
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

"""Batches from uint8 images (in memory, or a dataset store's rows), with augmentation done on
whole batches.

No DataLoader and no per-sample PIL work: an epoch is a seeded permutation, a batch is an
index into the uint8 images, and random crop / flip are tensor operations on the batch. Rows
of a store are read by a background thread a few batches ahead of the step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG that decides one epoch's order and augmentation; a pure function of (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def batch_indices(
    n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None, drop_last: bool = False
) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def fetched(x: Any, indices: Iterable[Any], ahead: int = 2, pin: bool = False) -> Iterator[torch.Tensor]:
    """x[i] for each i in order. From a tensor on the device (or on the CPU, for the CPU), gathered
    there; else (a store's rows, mtkd.data.store, or host tensors for a GPU, in pinned memory when
    `pin`, so the copy to the device does not block) by one background thread `ahead` batches
    before they are needed (reads and copies release the GIL)."""
    if isinstance(x, torch.Tensor) and not (pin and x.device.type == "cpu"):
        for index in indices:
            yield x[index.to(x.device) if isinstance(index, torch.Tensor) else index]
        return
    get = (lambda i: x[i].pin_memory()) if pin else x.__getitem__  # noqa: E731
    todo = iter(indices)
    with ThreadPoolExecutor(1, thread_name_prefix="mtkd-read") as pool:
        pending = deque(pool.submit(get, i) for _, i in zip(range(ahead), todo, strict=False))
        while pending:
            batch = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(get, following))
            yield batch


def row_slices(start: int, stop: int, batch_size: int) -> list[slice]:
    """Rows start..stop-1 in order, batch_size at a time."""
    return [slice(s, min(s + batch_size, stop)) for s in range(start, stop, batch_size)]


@dataclass
class CropFlip:
    """Per-image augmentation parameters: crop offsets into the padded image, and flips."""

    padding: int
    dy: torch.Tensor | None
    dx: torch.Tensor | None
    flip: torch.Tensor | None

    def __getitem__(self, index: torch.Tensor) -> CropFlip:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return CropFlip(self.padding, pick(self.dy), pick(self.dx), pick(self.flip))

    def scaled(self, fy: float, fx: float) -> CropFlip:
        """The same crops on images fy times taller and fx times wider (a teacher reading the
        original files at its own input size): offsets and padding scaled and rounded."""
        if self.dy is None or (fy == 1 and fx == 1):
            return self
        p = round(self.padding * min(fy, fx))
        scale = lambda t, f: (t.double() * f).round().long().clamp_(0, 2 * p)  # noqa: E731
        return CropFlip(p, scale(self.dy, fy), scale(self.dx, fx), self.flip)


def draw_crop_flip(n: int, padding: int, hflip: bool, generator: torch.Generator) -> CropFlip:
    """Random crop offsets (after `padding` zeros on each side) and flips for n images."""
    dy = dx = flip = None
    if padding > 0:
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
    return CropFlip(padding, dy, dx, flip)


def apply_crop_flip(images: torch.Tensor, params: CropFlip) -> torch.Tensor:
    """Apply per-image crop and flip parameters to a [B,C,H,W] batch (on any device)."""
    b, c, h, w = images.shape
    dev, p = images.device, params.padding
    out = images
    if params.dy is not None:
        padded = F.pad(images, (p, p, p, p))
        rows = (params.dy.to(dev, non_blocking=True)[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (params.dx.to(dev, non_blocking=True)[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch = torch.arange(b, device=dev)[:, None, None, None]
        chan = torch.arange(c, device=dev)[None, :, None, None]
        out = padded[batch, chan, rows, cols]
    if params.flip is not None:
        out = torch.where(params.flip.to(dev, non_blocking=True)[:, None, None, None], out.flip(-1), out)
    return out


def random_crop_flip(
    images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image of a [B,C,H,W] batch.

    The random numbers come from the CPU generator, so the result does not depend on the device.
    """
    return apply_crop_flip(images, draw_crop_flip(len(images), padding, hflip, generator))


class Normalize(torch.nn.Module):
    """uint8 or [0,1] float images to normalised floats with a dataset's mean and std."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        return (x - self.mean) / self.std

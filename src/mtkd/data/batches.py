"""Batches from in-memory uint8 tensors, with augmentation done on whole batches.

No DataLoader and no per-sample PIL work: an epoch is a seeded permutation, a batch is an
index into the uint8 tensor, and random crop / flip are tensor operations on the batch.
"""

from __future__ import annotations

from collections.abc import Iterator

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


def random_crop_flip(
    images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per image of a [B,C,H,W] batch."""
    b, c, h, w = images.shape
    out = images
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dev = images.device  # offsets come from the CPU generator, so results do not depend on the device
        dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
        batch, chan = (
            torch.arange(b, device=dev)[:, None, None, None],
            torch.arange(c, device=dev)[None, :, None, None],
        )
        out = padded[batch, chan, rows, cols]
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


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

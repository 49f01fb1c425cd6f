"""Decoding image files into uint8 tensors (used by image folders and `mtkd predict`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mtkd._decode import open_quietly
from mtkd.console import say
from mtkd.errors import MtkdError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image file, or fail with one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise MtkdError(f"image not found: {path}")
    if path.stat().st_size == 0:
        raise MtkdError(f"image file is empty (0 bytes): {path}")
    try:
        with open_quietly(str(path)) as img:
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or 1 << 62):
                say(f"{path}: {img.width * img.height:,} pixels, over PIL's decompression-bomb limit "
                    f"({Image.MAX_IMAGE_PIXELS:,}): decoded anyway")  # fmt: skip
            img.load()
            return img.copy()
    # PIL reports a broken file as any of these (a damaged PNG chunk is a SyntaxError).
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        Image.DecompressionBombError,
    ) as exc:
        raise MtkdError(f"cannot read image {path}: {exc}") from None


def is_grey(img: Image.Image) -> bool:
    return img.mode in ("1", "L", "LA", "I", "I;16", "F")


def image_to_tensor(img: Image.Image, channels: int, size: tuple[int, int]) -> torch.Tensor:
    """A PIL image as uint8 [C, H, W] with `channels` (1 or 3) at `size` (H, W)."""
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(arr, copy=True, order="C"))

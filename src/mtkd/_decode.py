"""Image decoding for the dataset store's worker processes.

Kept apart from `mtkd.data` so a spawned worker imports only PIL and numpy, not torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def header(path: str) -> tuple[int, int, bool] | str:
    """(width, height, grey) of an image file from its header, or the reason it cannot be read."""
    import os

    if os.path.getsize(path) == 0:
        return f"image file is empty (0 bytes): {path}"
    try:
        with Image.open(path) as img:
            return img.width, img.height, img.mode in GREY_MODES
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one line naming the file
        return f"cannot read image {path}: {exc}"


def decode(paths: list[str], channels: int, height: int, width: int) -> np.ndarray | str:
    """The images as uint8 [n, C, H, W], resized bilinearly, or the first failure as a line."""
    out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as img:
                img.load()
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            return f"cannot read image {path}: {exc}"
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


def decode_task(task: tuple[list[str], int, int, int]) -> np.ndarray | str:
    return decode(*task)

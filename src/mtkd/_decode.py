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
                # A JPEG much larger than the store is decoded at 1/2, 1/4 or 1/8 scale (never below
                # the store's size): several times faster on photos, then resized as any image.
                img.draft("L" if channels == 1 else "RGB", (width, height))
                img.load()
                img = img.convert("L" if channels == 1 else "RGB")
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            return f"cannot read image {path}: {exc}"
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


def decode_task(task: tuple[list[str], int, int, int, str, int]) -> str:
    """Decode a block of files and write it into the store's file at `offset`: its SHA-256, or
    the first failure as a line."""
    import hashlib
    import os

    paths, channels, height, width, target, offset = task
    out = decode(paths, channels, height, width)
    if isinstance(out, str):
        return out
    raw = memoryview(out).cast("B")
    fd = os.open(target, os.O_WRONLY)
    try:
        at = 0
        while at < len(raw):
            at += os.pwrite(fd, raw[at:], offset + at)
        # Start writing the block to disk now, while the next one is decoded, and let its pages go:
        # the store's final fsync has little left to wait for, and a store larger than memory does
        # not fill the page cache with dirty pages (Linux starts writeback on DONTNEED).
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, offset, len(raw), os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return hashlib.sha256(raw).hexdigest()

"""Image decoding for the dataset store's worker processes.

Kept apart from `mtkd.data` so a spawned worker imports only PIL and numpy, not torch.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def open_quietly(path: str) -> Image.Image:
    """Image.open without PIL's DecompressionBombWarning (over 89M pixels), which would reach the
    terminal raw: mtkd says it once, in one line (store.read_headers, images.open_image). PIL's
    error, at twice that, still refuses the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def header(path: str) -> tuple[int, int, bool] | str:
    """(width, height, grey) of an image file from its header, or the reason it cannot be read."""
    import os

    if os.path.getsize(path) == 0:
        return f"image file is empty (0 bytes): {path}"
    try:
        with open_quietly(path) as img:
            return img.width, img.height, img.mode in GREY_MODES
    except Exception as exc:  # noqa: BLE001 - reported by the parent as one line naming the file
        return f"cannot read image {path}: {exc}"


def decode(
    paths: list[str], channels: int, height: int, width: int, out: np.ndarray | None = None
) -> np.ndarray | str:
    """The images as uint8 [n, C, H, W] (into `out` when given), resized bilinearly, or the first
    failure as a line."""
    if out is None:
        out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with open_quietly(path) as img:
                mode = "L" if channels == 1 else "RGB"
                # A JPEG much larger than the store is decoded at 1/2, 1/4 or 1/8 scale (never below
                # the store's size): several times faster on photos, then resized as any image; a
                # colour JPEG for a grey store is decoded as grey. Draft and convert are called only
                # where they change something (the same bits; each otherwise costs a pass or a copy).
                if (mode == "L" and img.mode != "L") or (img.width >= 2 * width and img.height >= 2 * height):
                    img.draft(mode, (width, height))
                img.load()
                if img.mode != mode:
                    img = img.convert(mode)
                if img.size != (width, height):
                    img = img.resize((width, height), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except Exception as exc:  # noqa: BLE001
            return f"cannot read image {path}: {exc}"
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return out


_BUFFER = None  # this worker's page-aligned block buffer (mmap.mmap), reused from block to block
ALIGN = 4096  # what O_DIRECT asks of offsets, lengths and buffers (a page; the device's block at most)


def decode_task(task: tuple[list[str], int, int, int, str, int]) -> str:
    """Decode a block of files and write it into the store's file at `offset`: its SHA-256, or
    the first failure as a line.

    The block is decoded into page-aligned memory and written with O_DIRECT where the file system
    takes it and the block is aligned (the store's data starts at ALIGN): the pixels go to the
    disk without passing through the page cache, which on a virtual disk costs the kernel several
    times more CPU than the copy itself, CPU the other decoders need (`dd` here: 4 GiB in 14 s of
    system time buffered, 1.3 s direct). Elsewhere, a plain write, whose writeback starts at once.
    """
    import hashlib
    import mmap
    import os

    paths, channels, height, width, target, offset = task
    size = len(paths) * channels * height * width
    global _BUFFER
    if _BUFFER is None or len(_BUFFER) < size:  # one per worker, reused: a new one costs its page faults
        _BUFFER = mmap.mmap(-1, size)  # anonymous memory: page-aligned
    raw = memoryview(_BUFFER)[:size]
    try:
        out = decode(
            paths,
            channels,
            height,
            width,
            np.frombuffer(raw, np.uint8).reshape(len(paths), channels, height, width),
        )
        if isinstance(out, str):
            return out
        del out
        digest = hashlib.sha256(raw).hexdigest()
        at = 0
        if offset % ALIGN == 0 and size % ALIGN == 0 and hasattr(os, "O_DIRECT"):
            at = _write_direct(target, raw, offset)
        if at < size:  # not aligned, no O_DIRECT here, or it stopped part way: the rest buffered
            fd = os.open(target, os.O_WRONLY)
            try:
                while at < size:
                    at += os.pwrite(fd, raw[at:], offset + at)
                # Start writing the block to disk now, while the next one is decoded, and let its
                # pages go: the final fsync has little left to wait for, and a store larger than
                # memory does not fill the page cache with dirty pages.
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return digest
    finally:
        raw.release()


def _write_direct(target: str, raw: memoryview, offset: int) -> int:
    """Bytes of `raw` written at `offset` with O_DIRECT, in aligned pieces (0 where it is refused)."""
    import os

    try:
        fd = os.open(target, os.O_WRONLY | os.O_DIRECT)
    except OSError:  # a file system without O_DIRECT (tmpfs, some network ones)
        return 0
    at = 0
    try:
        while at < len(raw):
            got = os.pwrite(fd, raw[at:], offset + at)
            at += got
            if got <= 0 or at % ALIGN:
                break
    except OSError:
        pass  # refused for this device or buffer: the caller writes the rest buffered
    finally:
        os.close(fd)
    return at - at % ALIGN

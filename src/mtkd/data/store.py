"""The dataset store: an image folder decoded once into an on-disk uint8 array, reused by later runs.

A store holds one split's images at one resolution as `images.npy` (uint8 [N, C, H, W]) with
`labels.npy`, in `$MTKD_HOME/stores/<key>/`. The key is made of the files (relative paths, sizes,
modification times), the resolution, the channel count and the format, so an edited, added or
removed file makes another store. Decoding runs in worker processes (they import PIL and numpy
only) and shows progress; an interrupted build resumes from `progress.json`; `meta.json`, written
last, records the SHA-256 of every block of BLOCK images, and every block is checked when the
store is opened: a truncated or altered store is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from mtkd.console import Milestones, make_progress, say
from mtkd.errors import MtkdError
from mtkd.io import cache_dir, file_lock, read_json, write_json

BLOCK = 512  # images per decoding task and per integrity hash
FORMAT = 1


def _workers() -> int:
    return max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


def _pool(workers: int) -> ProcessPoolExecutor:
    # spawn: workers import mtkd._decode (PIL, numpy) and nothing of the parent's threads or torch.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def read_headers(files: list[Path], label: str) -> list[tuple[int, int, bool]]:
    """(width, height, grey) of every file, from headers only; the first unreadable file is one line."""
    from mtkd._decode import header

    paths = [str(p) for p in files]
    if len(paths) < 4 * BLOCK:  # not worth starting processes
        found = [header(p) for p in paths]
    else:
        with _pool(_workers()) as pool:
            found = list(pool.map(header, paths, chunksize=BLOCK))
    for item in found:
        if isinstance(item, str):
            raise MtkdError(item)
    return found  # type: ignore[return-value]


def store_key(root: Path, files: list[Path], channels: int, size: tuple[int, int]) -> str:
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "channels": channels, "size": list(size)}).encode())
    for p in files:
        st = p.stat()
        digest.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _block_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.sha256(images[i : i + BLOCK].tobytes()).hexdigest() for i in range(0, len(images), BLOCK)]


def _open(folder: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(images memory-mapped read-only, labels) of a finished, intact store, else None."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        images = np.load(folder / "images.npy", mmap_mode="r")
        labels = np.load(folder / "labels.npy")
        if list(images.shape) != meta["shape"] or len(labels) != meta["shape"][0]:
            raise ValueError("shape")
        if (
            _block_hashes(images) != meta["blocks"]
            or hashlib.sha256(labels.tobytes()).hexdigest() != meta["labels"]
        ):
            raise ValueError("hash")
        return images, labels
    except (ValueError, KeyError, OSError, MtkdError):
        say(f"dataset store {folder.name} is truncated or altered; rebuilding it")
        return None


def folder_store(
    root: Path, files: list[Path], labels: list[int], channels: int, size: tuple[int, int], label: str
) -> tuple[np.ndarray, np.ndarray]:
    """The images of `files` at `size` as a store: opened when it exists, built (or finished) when not."""
    key = store_key(root, files, channels, size)
    folder = cache_dir() / "stores" / key
    with file_lock(folder.parent / f"{key}.lock", f"dataset store {key}", wait=True):
        found = _open(folder)
        if found is None:
            _build(folder, files, np.asarray(labels, dtype=np.int64), channels, size, label)
            found = _open(folder)
    if found is None:
        raise MtkdError(f"dataset store {folder} could not be read back after building it")
    return found


def _build(
    folder: Path, files: list[Path], labels: np.ndarray, channels: int, size: tuple[int, int], label: str
) -> None:
    from mtkd._decode import decode_task

    n, (h, w) = len(files), size
    if (folder / "meta.json").exists():  # a damaged finished store: start again
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial_path, progress_path = folder / "images.partial.npy", folder / "progress.json"
    mode = "r+" if partial_path.is_file() else "w+"
    images = np.lib.format.open_memmap(partial_path, mode=mode, dtype=np.uint8, shape=(n, channels, h, w))
    done = int(read_json(progress_path, default={}).get("done", 0)) if mode == "r+" else 0
    starts = list(range(done - done % BLOCK, n, BLOCK))
    gib = n * channels * h * w / 2**30
    say(
        f"{label}: decoding {n - done} of {n} images once into a store at {h}x{w} ({gib:.2f} GiB) in {folder}"
    )
    bar, lines = make_progress(True), Milestones(label, n, done)
    began, decoded = time.perf_counter(), 0
    tasks = [([str(p) for p in files[s : s + BLOCK]], channels, h, w) for s in starts]
    # Worker processes pay for themselves from a few blocks on; fewer are decoded here.
    pool = _pool(_workers()) if len(tasks) >= 4 else None
    results = pool.map(decode_task, tasks) if pool is not None else map(decode_task, tasks)
    with bar, pool or contextlib.nullcontext():
        task = bar.add_task(label, total=n, completed=done, loss=0.0, acc=0.0, ips=0.0)
        for start, out in zip(starts, results, strict=True):
            if isinstance(out, str):
                raise MtkdError(out)
            images[start : start + len(out)] = out
            images.flush()
            write_json(progress_path, {"done": start + len(out)})  # blocks come back in order
            decoded += len(out)
            ips = decoded / (time.perf_counter() - began)
            bar.update(task, completed=start + len(out), ips=ips)
            lines.update(start + len(out), ips)
    images.flush()
    blocks = _block_hashes(images)
    del images
    partial_path.replace(folder / "images.npy")
    np.save(folder / "labels.npy", labels)
    write_json(folder / "meta.json", {
        "format": FORMAT, "shape": [n, channels, h, w], "blocks": blocks,
        "labels": hashlib.sha256(labels.tobytes()).hexdigest(), "files": n,
    })  # fmt: skip
    progress_path.unlink(missing_ok=True)

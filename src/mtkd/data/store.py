"""The dataset store: an image folder decoded once into an on-disk uint8 array, reused by later runs.

A store holds one split's images at one resolution as `images.npy` (uint8 [N, C, H, W]) with
`labels.npy`, in `$MTKD_HOME/stores/<key>/`. The key is made of the files (relative paths, sizes,
modification times), the resolution, the channel count and the format, so an edited, added or
removed file makes another store. Decoding runs in worker processes (they import PIL and numpy
only) and shows progress; an interrupted build resumes from `progress.json`; `meta.json`, written
last, records the SHA-256 of every block of BLOCK images, and every block is checked when the
store is opened after its file changed: a truncated or altered store is rebuilt, never used.

Runs read a store through `StoredImages`: rows are read with `pread` into a batch-sized buffer
when asked for, so the process holds a few batches, never the array (nothing is memory-mapped:
a store larger than the memory, or the address space, a process is given still trains).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mtkd._decode import ALIGN
from mtkd.console import Milestones, make_progress, say
from mtkd.errors import MtkdError
from mtkd.io import cache_dir, file_lock, read_json, write_json

BLOCK = 512  # images per decoding task and per integrity hash
FORMAT = 2  # 2: JPEGs are decoded at a reduced scale (PIL draft) when much larger than the store


def decode_workers() -> int:
    """Worker processes for decoding images: one per core this process may use, at most 8."""
    return max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    )


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork where there is one (as torch's DataLoader): a spawned worker would run the caller's
    # script again, which fails in a script without `if __name__ == "__main__":`. The workers run
    # mtkd._decode (PIL, numpy) only, never torch or a lock of the parent's threads.
    methods = multiprocessing.get_all_start_methods()
    return ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    )


def memory_available() -> int:
    """Bytes this process may still use: the least of the system's available memory, its memory
    cgroup's limit (containers, `systemd-run -p MemoryMax=`; v1 or v2) less what the process holds,
    and its address-space limit (`ulimit -v`) less what it has mapped."""
    import resource

    page = os.sysconf("SC_PAGE_SIZE")
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError):
        mapped, resident = (int(v) * page for v in Path("/proc/self/statm").read_text().split()[:2])
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, where = line.split(":", 2)
            base = "/sys/fs/cgroup" if controllers == "" else "/sys/fs/cgroup/memory"
            if controllers not in ("", "memory"):
                continue
            name = "memory.max" if controllers == "" else "memory.limit_in_bytes"
            for folder in (Path(base + where), Path(base)):
                if (folder / name).is_file():
                    limit = (folder / name).read_text().strip()
                    if limit != "max" and int(limit) < 1 << 60:
                        found.append(int(limit) - resident)
                    break
        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            found.append(soft - mapped)
    return max(0, min(found)) if found else 1 << 62


def read_headers(files: list[Path], label: str) -> list[tuple[int, int, bool]]:
    """(width, height, grey) of every file, from headers only; the first unreadable file is one line.
    Kept in `$MTKD_HOME/stores/headers/`, keyed by the files' paths, sizes and modification times,
    so a folder opened again costs a stat of each file, not an open."""
    from mtkd.data.files import files_digest

    paths = [str(p) for p in files]
    memo = cache_dir() / "stores" / "headers" / f"{files_digest(paths)}.json"
    kept = read_json(memo, default=None) if memo.is_file() else None
    if isinstance(kept, list) and len(kept) == len(paths):
        with contextlib.suppress(ValueError, TypeError):  # a damaged memo is read again from the files
            return [(int(w), int(h), bool(g)) for w, h, g in kept]
    found = _headers(paths)
    large = [
        (w * h, p)
        for (w, h, _), p in zip(found, paths, strict=True)
        if w * h > (Image.MAX_IMAGE_PIXELS or 1 << 62)
    ]
    if large:
        pixels, path = max(large)
        say(f"{label}: {len(large)} image(s) over PIL's decompression-bomb limit ({Image.MAX_IMAGE_PIXELS:,} pixels), "
            f"the largest {path} ({pixels:,}): decoded anyway, at the store's size")  # fmt: skip
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_json(memo, [list(item) for item in found])
    return found


def _headers(paths: list[str]) -> list[tuple[int, int, bool]]:
    from mtkd._decode import header

    if len(paths) < 4 * BLOCK:  # not worth starting processes
        found = [header(p) for p in paths]
    else:
        with _pool(decode_workers()) as pool:
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


def _layout(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, byte offset of the data) of a uint8 .npy file, from its header."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(fh)
        if dtype != np.uint8 or fortran:
            raise ValueError("layout")
        return tuple(shape), fh.tell()


def _create_array(path: Path, shape: tuple[int, ...]) -> None:
    """A sparse uint8 .npy file of `shape` whose data starts at ALIGN bytes (its header padded, as
    the format allows), so blocks of whole pages can be written to it with O_DIRECT."""
    header = repr({"descr": "|u1", "fortran_order": False, "shape": tuple(int(d) for d in shape)})
    length = ALIGN - 10  # magic (6), version (2), header length (2), then the header
    with open(path, "wb") as fh:
        fh.write(
            b"\x93NUMPY\x01\x00" + length.to_bytes(2, "little") + header.ljust(length - 1).encode() + b"\n"
        )
        fh.truncate(ALIGN + math.prod(shape))


def _file_hashes(path: Path, offset: int, block_bytes: int, blocks: int) -> list[str]:
    """SHA-256 of each block of the file's data, read in order into one buffer (never mapped, so
    checking a store larger than memory does not grow the process)."""
    buffer = bytearray(block_bytes)
    out = []
    with open(path, "rb", buffering=0) as fh:
        fh.seek(offset)
        for _ in range(blocks):
            got = fh.readinto(buffer)
            out.append(hashlib.sha256(memoryview(buffer)[:got]).hexdigest())
    return out


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _open(folder: Path) -> tuple[tuple[int, ...], int, np.ndarray] | None:
    """(shape, data offset, labels) of a finished, intact store, else None.

    Every block's hash is checked the first time a store is opened, and again whenever its file
    has changed since (size, modification and change times, inode: `checked.json`), so a store
    of many gigabytes is read through once, not at every run.
    """
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        path = folder / "images.npy"
        shape, offset = _layout(path)
        labels = np.load(folder / "labels.npy")
        if list(shape) != meta["shape"] or len(labels) != meta["shape"][0]:
            raise ValueError("shape")
        if hashlib.sha256(labels.tobytes()).hexdigest() != meta["labels"]:
            raise ValueError("labels")
        if path.stat().st_size != offset + math.prod(shape):
            raise ValueError("size")
        checked = folder / "checked.json"
        if read_json(checked, default=None) != _stat(path):
            row = math.prod(shape[1:])
            if _file_hashes(path, offset, BLOCK * row, len(meta["blocks"])) != meta["blocks"]:
                raise ValueError("hash")
            write_json(checked, _stat(path))
        return shape, offset, labels
    except (ValueError, KeyError, OSError, MtkdError):
        say(f"dataset store {folder.name} is truncated or altered; rebuilding it")
        return None


def folder_store(
    root: Path, files: list[Path], labels: list[int], channels: int, size: tuple[int, int], label: str
) -> tuple[StoredImages, np.ndarray]:
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
    shape, offset, stored_labels = found
    return StoredImages(folder, shape, offset), stored_labels


def array_store(images: torch.Tensor, labels: torch.Tensor, label: str) -> StoredImages:
    """A split that was read into memory (a named dataset's: torchvision's sets, Fashion-MNIST) written
    once into a store keyed by its content, so training can read it batch by batch from disk."""
    arr = np.ascontiguousarray(images.numpy())
    ys = np.ascontiguousarray(labels.numpy().astype(np.int64))
    digest = hashlib.sha256(json.dumps({"format": FORMAT, "array": list(arr.shape)}).encode())
    digest.update(memoryview(arr).cast("B"))
    digest.update(ys.tobytes())
    key = f"array-{digest.hexdigest()[:24]}"
    folder = cache_dir() / "stores" / key
    with file_lock(folder.parent / f"{key}.lock", f"dataset store {key}", wait=True):
        found = _open(folder)
        if found is None:
            _write_array(folder, arr, ys, label)
            found = _open(folder)
    if found is None:
        raise MtkdError(f"dataset store {folder} could not be read back after writing it")
    shape, offset, _ = found
    return StoredImages(folder, shape, offset)


def _write_array(folder: Path, arr: np.ndarray, labels: np.ndarray, label: str) -> None:
    """The store of an array: the same files as a built one (blocks hashed, meta.json last)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    say(f"{label}: writing {len(arr)} images into a store ({arr.nbytes / 2**30:.2f} GiB) in {folder}")
    partial = folder / "images.partial.npy"
    with open(partial, "wb") as fh:
        np.save(fh, arr)
        fh.flush()
        os.fsync(fh.fileno())
    flat = arr.reshape(len(arr), -1)
    blocks = [
        hashlib.sha256(memoryview(flat[s : s + BLOCK]).cast("B")).hexdigest()
        for s in range(0, len(arr), BLOCK)
    ]
    partial.replace(folder / "images.npy")
    np.save(folder / "labels.npy", labels)
    write_json(folder / "checked.json", _stat(folder / "images.npy"))
    write_json(folder / "meta.json", {
        "format": FORMAT, "shape": list(arr.shape), "blocks": blocks,
        "labels": hashlib.sha256(labels.tobytes()).hexdigest(), "files": len(arr),
    })  # fmt: skip


def _resumable(partial: Path, progress: Path, shape: tuple[int, ...], label: str) -> list[str]:
    """The blocks of an interrupted build that are on disk as recorded: `progress.json` lists the
    hash of each block done, and each is read back and checked (a record can survive the blocks it
    describes, as when the page cache is lost), so a resume keeps only the blocks that match, in
    order, and decodes the rest again. [] for a new build."""
    if not partial.is_file():
        return []
    try:
        record = read_json(progress, default={})
        blocks = record.get("blocks", []) if isinstance(record, dict) else None
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise ValueError("progress")
        found, offset = _layout(partial)
        if tuple(found) != tuple(shape) or partial.stat().st_size != offset + math.prod(shape):
            raise ValueError("layout")
        if len(blocks) > math.ceil(shape[0] / BLOCK):
            raise ValueError("more blocks than the store holds")
        on_disk = _file_hashes(partial, offset, BLOCK * math.prod(shape[1:]), len(blocks))
    except (ValueError, KeyError, OSError, MtkdError):
        say(f"{label}: the interrupted store build cannot be read back; starting it again")
        return []
    good = next((i for i, (a, b) in enumerate(zip(blocks, on_disk, strict=True)) if a != b), len(blocks))
    if good < len(blocks):
        say(f"{label}: {len(blocks) - good} of the {len(blocks)} blocks an interrupted build recorded are not "
            f"on disk as recorded; decoding them again")  # fmt: skip
    return blocks[:good]


def _build(
    folder: Path, files: list[Path], labels: np.ndarray, channels: int, size: tuple[int, int], label: str
) -> None:
    """Decode the files into `images.partial.npy` block by block: each worker writes its block in
    place and returns its hash; `progress.json` records the blocks done, in order, for a resume."""
    from mtkd._decode import decode_task

    n, (h, w) = len(files), size
    if (folder / "meta.json").exists():  # a damaged finished store: start again
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    partial_path, progress_path = folder / "images.partial.npy", folder / "progress.json"
    row = channels * h * w
    blocks = _resumable(partial_path, progress_path, (n, channels, h, w), label)
    if not blocks:  # a new file of the full size (sparse until written)
        _create_array(partial_path, (n, channels, h, w))
    _, offset = _layout(partial_path)
    done = min(n, len(blocks) * BLOCK)
    gib = n * row / 2**30
    say(
        f"{label}: decoding {n - done} of {n} images once into a store at {h}x{w} ({gib:.2f} GiB) in {folder}"
    )
    bar, lines = make_progress(True), Milestones(label, n, done)
    began, decoded = time.perf_counter(), 0
    starts = list(range(done, n, BLOCK))
    tasks = [
        ([str(p) for p in files[s : s + BLOCK]], channels, h, w, str(partial_path), offset + s * row)
        for s in starts
    ]
    # Worker processes pay for themselves from a few blocks on; fewer are decoded here.
    pool = _pool(decode_workers()) if len(tasks) >= 4 else None
    results = pool.map(decode_task, tasks) if pool is not None else map(decode_task, tasks)
    with bar, pool or contextlib.nullcontext():
        task = bar.add_task(label, total=n, completed=done, loss=0.0, acc=0.0, ips=0.0)
        for start, out in zip(starts, results, strict=True):
            if out.startswith("cannot") or out.startswith("image file"):
                raise MtkdError(out)
            blocks.append(out)
            write_json(progress_path, {"blocks": blocks})  # results come back in order
            stop = min(n, start + BLOCK)
            decoded += stop - start
            ips = decoded / (time.perf_counter() - began)
            bar.update(task, completed=stop, ips=ips)
            lines.update(stop, ips)
    with open(partial_path, "rb+") as fh:
        os.fsync(fh.fileno())
    partial_path.replace(folder / "images.npy")
    np.save(folder / "labels.npy", labels)
    write_json(folder / "checked.json", _stat(folder / "images.npy"))  # hashed as it was written
    write_json(folder / "meta.json", {
        "format": FORMAT, "shape": [n, channels, h, w], "blocks": blocks,
        "labels": hashlib.sha256(labels.tobytes()).hexdigest(), "files": n,
    })  # fmt: skip
    progress_path.unlink(missing_ok=True)


class StoredImages:
    """Rows of a store's uint8 [N, C, H, W] array, read from disk when indexed.

    Indexing with a slice, an integer array or tensor returns a uint8 tensor of those rows (read
    with `pread`, in file order, one read per contiguous run); `subset` makes a lazy view of some
    rows (a split carved from another).
    """

    dtype = torch.uint8
    ndim = 4

    def __init__(self, folder: Path, shape: tuple[int, ...], offset: int, rows: np.ndarray | None = None):
        self.folder, self.offset = Path(folder), int(offset)
        self._full = tuple(int(d) for d in shape)
        self.rows = np.arange(self._full[0], dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        self.row_bytes = math.prod(self._full[1:])
        self._fd: tuple[int, int] | None = None  # (pid, fd): a forked worker opens its own

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self._full[1:]))

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def subset(self, index: np.ndarray | torch.Tensor) -> StoredImages:
        return StoredImages(self.folder, self._full, self.offset, self.rows[np.asarray(index)])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._fd[0] != os.getpid():
            self._fd = (os.getpid(), os.open(self.folder / "images.npy", os.O_RDONLY))
        return self._fd[1]

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None and self._fd[0] == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd[1])

    def __getitem__(self, index: slice | np.ndarray | torch.Tensor | list[int]) -> torch.Tensor:
        wanted = (
            self.rows[index] if isinstance(index, slice) else self.rows[np.asarray(index, dtype=np.int64)]
        )
        out = np.empty((len(wanted), *self._full[1:]), dtype=np.uint8)
        flat = out.reshape(len(wanted), -1)
        fd, size = self._descriptor(), self.row_bytes
        order = np.argsort(wanted, kind="stable")
        # One read per run of rows consecutive both in the file and in the output (a slice: one read).
        breaks = np.flatnonzero((np.diff(wanted[order]) != 1) | (np.diff(order) != 1)) + 1
        for run in np.split(order, breaks) if len(order) else []:
            first = int(run[0])
            target = memoryview(flat[first : first + len(run)]).cast("B")
            at = self.offset + int(wanted[first]) * size
            while len(target):  # a read returns at most 2 GiB
                got = os.preadv(fd, [target], at)
                if got <= 0:
                    raise MtkdError(
                        f"dataset store {self.folder} is shorter than its metadata says: rebuild it"
                    )
                target, at = target[got:], at + got
        return torch.from_numpy(out)

    def chunks(self, rows: int = BLOCK) -> Iterator[torch.Tensor]:
        """Every row in order, `rows` at a time."""
        for start in range(0, len(self), rows):
            yield self[start : start + rows]

    def memo(self, what: str, compute: Callable[[], Any]) -> Any:
        """A value derived from these rows (a digest, channel statistics), computed once per store."""
        rows = hashlib.sha256(self.rows.tobytes()).hexdigest()[:24]
        path = self.folder / "memo" / f"{what}-{rows}.json"
        found = read_json(path, default=None)
        if found is None:
            found = {"value": compute()}
            write_json(path, found)
        return found["value"]

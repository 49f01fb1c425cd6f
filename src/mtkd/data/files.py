"""An image folder's original files read at another resolution than its store (a teacher's own
input size), streamed through a DataLoader with worker processes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from mtkd.errors import MtkdError


class FileImages(TorchDataset):
    """Image files decoded as the store decodes them (mtkd._decode), at `size` x `size`."""

    def __init__(self, files: list[str], channels: int, size: int):
        self.files, self.channels, self.size = files, channels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        """The image, or why it cannot be read (reported by the parent as one line)."""
        from mtkd._decode import decode

        out = decode([self.files[i]], self.channels, self.size, self.size)
        return out if isinstance(out, str) else torch.from_numpy(out[0])


def _stack(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    failed = [x for x in items if isinstance(x, str)]
    return failed[0] if failed else torch.stack(items)


def files_digest(files: list[str]) -> str:
    """What identifies the files' content, as the store's key does: paths, sizes, modification times."""
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        st = os.stat(path)
        digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_files(
    files: list[str], chunks: Iterable[torch.Tensor], channels: int, size: int, workers: int
) -> Iterator[torch.Tensor]:
    """The files of each chunk of row indices in turn, as uint8 [n, C, size, size] batches."""
    chunks = [c.tolist() for c in chunks]
    if not chunks:
        return
    loader = DataLoader(
        FileImages(files, channels, size), batch_sampler=chunks, num_workers=workers, collate_fn=_stack,
        prefetch_factor=2 if workers else None,
    )  # fmt: skip
    for batch in loader:
        if isinstance(batch, str):
            raise MtkdError(batch)
        yield batch

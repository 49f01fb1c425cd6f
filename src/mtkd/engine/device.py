"""Device choice and thread settings."""

from __future__ import annotations

import torch

from mtkd.errors import MtkdError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA where present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MtkdError(
            "device 'cuda' requested but no CUDA device is available (use --train.device auto or cpu)"
        )
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)

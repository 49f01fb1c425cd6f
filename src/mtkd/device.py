"""Device choice, thread settings, and the CUDA speed-ups (mixed precision, channels_last, data kept on the device)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mtkd.errors import MtkdError


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA where present, else the CPU; any other name is checked against what this
    machine has, in one line."""
    if isinstance(name, str) and name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise MtkdError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MtkdError(
                f"device '{name}' requested but no CUDA device is available (use --train.device auto or cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MtkdError(f"device '{name}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise MtkdError(f"device '{name}' requested but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise MtkdError(f"device '{name}' is not supported (auto, cpu, cuda, cuda:N, mps)")
    return dev


def default_threads() -> int:
    """The compute threads of a run that does not choose: OMP_NUM_THREADS where set (torchrun and
    `--nproc` set it for each process), else every core this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def compute_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, and give back the previous count after.

    The thread count is part of a run: CPU kernels split their reductions by thread, so the last
    bits of every result depend on it. A run sets it whatever ran before in the process, and
    leaves the process as it found it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass
class Precision:
    """Mixed precision of the training step: autocast dtype (None: fp32) and fp16's loss scaler."""

    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.dtype)


def precision_name(name: str, device: torch.device) -> str:
    """'auto' is bf16 on CUDA devices that compute it, fp16 with loss scaling on older ones, fp32
    elsewhere; any other name is itself."""
    if name != "auto":
        return name
    if device.type != "cuda":
        return "fp32"
    # bf16 only where the GPU computes it (Ampere on); emulated bf16 is slow, fp16 with loss scaling is not
    return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"


def resolve_precision(name: str, device: torch.device) -> Precision:
    """The autocast dtype and loss scaler of a precision name (see precision_name for 'auto')."""
    name = precision_name(name, device)
    if name == "fp32":
        return Precision()
    if name == "fp16":
        if device.type != "cuda":
            raise MtkdError("train.precision fp16 needs a CUDA device; on the CPU use fp32 or bf16")
        return Precision(torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(torch.bfloat16)


def use_channels_last(setting: str, device: torch.device) -> bool:
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` should live on `device` for a whole run: a quarter of a CUDA device's free
    memory at most (the rest is the model's); never on the CPU, where the data already is."""
    if device.type == "cpu":
        return False
    if device.type == "cuda":
        return nbytes <= torch.cuda.mem_get_info(device)[0] // 4
    return True  # another accelerator (or `meta`, in tests): as CUDA without the free-memory check


def resident(t: Any, device: torch.device) -> Any:
    """In-memory data (images, labels) moved to the training device once, when it fits there, so a
    step's batch is a gather on the device; otherwise as it is (a dataset store's rows, data too
    large, the CPU): then each batch is gathered on the host (into pinned memory for a GPU)."""
    if isinstance(t, torch.Tensor) and fits_on(device, t.numel() * t.element_size()):
        return t.to(device)
    return t

"""Teachers that are modules of yours: given from Python (`ModuleTeacher`) or registered by name.

A module of yours is read through `OutputsView` (timm's protocol, or a hook at its last linear
layer), frozen, and keyed in the cache by its content, never its name. `register_teacher` and the
`mtkd.teachers` entry-point group make one known by name in `transfer.teachers`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.errors import MtkdError
from mtkd.models.adapters import OutputsView
from mtkd.registry import Registry


class ModuleTeacher(nn.Module):
    """A classifier module of yours as a frozen teacher.

    It gets the dataset's images as floats in [0, 1] (as torchvision's ToTensor gives them, and
    as float data given to mtkd is), resized to `input_size` (default: the dataset's size), grey
    made colour when `mean` has three values, then normalised with `mean` and `std` when given
    (for instance the statistics it was trained with). Its logits are
    distilled when it has one per class of the dataset; otherwise only its features are used
    (as for a raw ImageNet teacher). The teacher cache keys it by content: its module tree,
    weights, buffers and preprocessing, never by name.
    """

    def __init__(
        self, module: nn.Module, *, name: str | None = None, input_size: int | None = None,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None, feature_layer: str | None = None,
    ):  # fmt: skip
        super().__init__()
        if (mean is None) != (std is None):
            raise MtkdError("a teacher module's mean and std go together: give both or neither")
        if not isinstance(module, nn.Module):
            raise MtkdError(f"ModuleTeacher takes an nn.Module, got {type(module).__name__}")
        if input_size is not None and (isinstance(input_size, bool) or not isinstance(input_size, int)
                                       or not 4 <= input_size <= 1024):  # fmt: skip
            raise MtkdError(
                f"a teacher module's input_size must be a whole number from 4 to 1024, got {input_size!r}"
            )
        if mean is not None and std is not None:
            try:
                mean, std = [float(v) for v in mean], [float(v) for v in std]
            except (TypeError, ValueError):
                raise MtkdError(
                    "a teacher module's mean and std must be lists of numbers, one per channel"
                ) from None
            if len(mean) != len(std) or len(mean) not in (1, 3):
                raise MtkdError(
                    f"a teacher module's mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}"
                )
            if not all(math.isfinite(v) and v > 0 for v in std) or not all(math.isfinite(v) for v in mean):
                raise MtkdError(
                    f"a teacher module's std must be positive and finite (it divides the pixels), got {std}"
                )
        self.model = module
        self.name = name or type(module).__name__
        self.input_size = input_size
        self._given = (list(mean), list(std)) if mean is not None else None
        self.view = OutputsView(module, feature_layer)
        self.num_features, self.num_outputs = 0, 0
        self._head_takes_map = True  # no separate head: the clean-features shortcut never applies

    def bind(self, channels: int, size: tuple[int, int]) -> ModuleTeacher:
        """Settle the preprocessing for a dataset (its image size unless `input_size`) and read the
        teacher's widths. Call it after moving the teacher."""
        mean, std = self._given or ([0.0] * channels, [1.0] * channels)
        device = next((p.device for p in self.parameters()), torch.device("cpu"))
        for key, value in (("mean", mean), ("std", std)):
            t = torch.tensor(value, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            if key in self._buffers:
                self._buffers[key] = t
            else:
                self.register_buffer(key, t, persistent=False)
        self._size = (self.input_size, self.input_size) if self.input_size else tuple(size)
        self.num_features, self.num_outputs = self.view.shapes(len(mean), self._size, device)
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1 and self.mean.shape[1] == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(self._size):
            down = x.shape[-1] > self._size[-1]
            x = F.interpolate(x, size=self._size, mode="bilinear", align_corners=False, antialias=down)
        return (x - self.mean) / self.std

    def pooled_and_logits(
        self, images: torch.Tensor, with_logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, pooled, logits = self.view(self.prepare(images))
        return pooled, logits if with_logits else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.view(self.prepare(images))[2]


TeacherFactory = Callable[[], Any]
TEACHERS: Registry[TeacherFactory] = Registry("teacher", "mtkd.teachers")


def register_teacher(name: str, make: TeacherFactory, origin: str = "python") -> None:
    """Make a teacher available by `name` in `transfer.teachers`: `make()` returns an nn.Module
    (used as ModuleTeacher(module)) or a ModuleTeacher with its own preprocessing. Entry points in
    the `mtkd.teachers` group do the same for a pip-installed package."""
    TEACHERS.register(name, make, origin)


def as_teacher(obj: Any, name: str) -> ModuleTeacher:
    if isinstance(obj, ModuleTeacher):
        return obj
    if isinstance(obj, nn.Module):
        return ModuleTeacher(obj, name=name)
    raise MtkdError(f"teacher '{name}' must be an nn.Module, got {type(obj).__name__}")


def plugin_teacher(name: str) -> ModuleTeacher | None:
    """The registered teacher of this name, built, or None when no plugin has it."""
    if name not in TEACHERS:
        return None
    try:
        made = TEACHERS[name]()
    except MtkdError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, named in one line
        raise MtkdError(f"teacher plugin '{name}' failed: {type(exc).__name__}: {exc}") from None
    teacher = as_teacher(made, name)
    teacher.name = name
    return teacher

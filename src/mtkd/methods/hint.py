"""`hint`: FitNets (Romero et al., ICLR 2015) as RepDistiller and CA-MKD publish it. An
intermediate student map goes through a regressor to a teacher's intermediate map, and

    hint = weight * mean_k MSE(R_k(s_map), t_k_map)      (MSE averaged over all elements)

HintLoss is a plain MSE (HobbitLong/RepDistiller `distiller_zoo/FitNet.py:6-14`); the regressor
is ConvReg (Rorozhl/CA-MKD `models/util.py:10-37`, the same in RepDistiller `models/util.py`):
chosen by the two grids' heights, a 3x3 conv of stride 2 (student twice the teacher's), a 4x4
transposed conv of stride 2 (half), a conv whose kernel covers the difference (larger), else a
3x3 conv (smaller; a quarter is first resized bilinearly up to the teacher's grid), then batch
norm and ReLU. With several teachers the losses are averaged, as in CA-MKD's FitNet-MKD
(`helper/loops.py:261-265`, whose `torch.tensor(list)` there drops the gradient: here it is kept).
The default weight is their scripts' beta, 100. `adapter: conv1x1` is mtkd's earlier form: a
bare 1x1 conv, the teacher's map average-pooled to the student's grid.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods.base import Method, MethodOptions, Step, StudentOutputs, TeacherOutputs, register


class HintOptions(MethodOptions):
    weight: float = Field(100.0, ge=0, description="beta of the published scripts")
    student_layer: str = Field(..., description="student module path, e.g. features.6")
    teacher_layer: str | list[str] = Field(
        ..., description="teacher module path (body.features.6), or one per teacher"
    )
    student_channels: int = Field(..., ge=1)
    teacher_channels: list[int] = Field(..., description="channels of each teacher's map")
    student_size: int | None = Field(None, ge=1, description="height of the student's map (convreg)")
    teacher_size: int | list[int] | None = Field(
        None, description="height of the teachers' maps (convreg), or one per teacher"
    )
    adapter: Literal["convreg", "conv1x1"] = "convreg"


class ConvReg(nn.Module):
    """A student map [B, Cs, Hs, Ws] onto a teacher's grid and channels [B, Ct, Ht, Wt]."""

    def __init__(self, cs: int, ct: int, hs: int, ht: int, ws: int | None = None, wt: int | None = None):
        super().__init__()
        ws, wt = ws or hs, wt or ht
        if hs < ht and ht not in (2 * hs, 4 * hs):
            raise MtkdError(
                f"hint: a {hs}x{hs} student map cannot be regressed onto a {ht}x{ht} teacher map "
                "(ConvReg takes a larger, equal, half or quarter size): pick other layers"
            )
        self.upsample = ht if hs * 4 == ht else None
        if hs == 2 * ht:
            self.conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif hs * 2 == ht:
            self.conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht:
            self.conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            self.conv = nn.Conv2d(cs, ct, kernel_size=3, padding=1, stride=1)
        self.bn = nn.BatchNorm2d(ct)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample is not None:
            x = F.interpolate(x, size=(self.upsample, self.upsample), mode="bilinear", align_corners=False)
        return F.relu(self.bn(self.conv(x)))


def _per_teacher(value: Any, k: int, key: str) -> list:
    """One value for each of k teachers: a single value for all, or a list of k."""
    if not isinstance(value, list):
        return [value] * k
    if len(value) != k:
        raise MtkdError(f"method 'hint': {key} lists {len(value)} values for {k} teachers (teacher_channels)")
    return value


@register
class Hint(Method):
    name = "hint"
    paper = "Romero et al., ICLR 2015, FitNets: Hints for Thin Deep Nets"
    reads = ("intermediate maps",)
    trains = "a regressor per teacher (ConvReg, or a 1x1 conv)"
    Options = HintOptions

    def __init__(self, options: HintOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        o = options
        k = len(o.teacher_channels)
        self.layers = _per_teacher(o.teacher_layer, k, "teacher_layer")
        if o.adapter == "convreg":
            if o.student_size is None or o.teacher_size is None:
                raise MtkdError("method 'hint' with adapter convreg needs student_size and teacher_size")
            sizes = _per_teacher(o.teacher_size, k, "teacher_size")
            if any(size < 1 for size in sizes):
                raise MtkdError(f"method 'hint': teacher_size must be at least 1, got {o.teacher_size}")
            self.adapters = nn.ModuleList(
                ConvReg(o.student_channels, c, o.student_size, h)
                for c, h in zip(o.teacher_channels, sizes, strict=True)
            )
        else:
            self.adapters = nn.ModuleList(nn.Conv2d(o.student_channels, c, 1) for c in o.teacher_channels)

    def student_maps(self) -> list[str]:
        return [self.options.student_layer]

    def teacher_maps(self) -> list[str]:
        return sorted(set(self.layers))

    def teacher_maps_of(self, k: int) -> list[str]:
        return [self.layers[k]]

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        s_map = student.maps[self.options.student_layer]
        losses = []
        for adapter, teacher, layer in zip(self.adapters, teachers, self.layers, strict=True):
            t_map = teacher.maps[layer]
            if self.options.adapter == "conv1x1" and t_map.shape[-2:] != s_map.shape[-2:]:
                t_map = F.adaptive_avg_pool2d(t_map, s_map.shape[-2:])
            losses.append(F.mse_loss(adapter(s_map), t_map))
        return {"hint": self.options.weight * torch.stack(losses).mean()}

"""`hint`: FitNets (Romero et al. 2015). An intermediate student map, through a learned 1x1
conv adapter, regresses a teacher's intermediate map (resized to the student's grid):

    loss term = weight * mean_k MSE(A_k(s_map), resize(t_k_map))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.methods.base import Method, MethodOptions, StudentOutputs, TeacherOutputs, register


class HintOptions(MethodOptions):
    student_layer: str = Field(..., description="student module path, e.g. features.6")
    teacher_layer: str = Field(..., description="teacher module path, e.g. body.features.6")
    student_channels: int = Field(..., ge=1)
    teacher_channels: list[int] = Field(..., description="channels of each teacher's map")


@register
class Hint(Method):
    name = "hint"
    Options = HintOptions

    def __init__(self, options: HintOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        self.adapters = nn.ModuleList(
            nn.Conv2d(options.student_channels, c, 1) for c in options.teacher_channels
        )

    def student_maps(self) -> list[str]:
        return [self.options.student_layer]

    def teacher_maps(self) -> list[str]:
        return [self.options.teacher_layer]

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        s_map = student.maps[self.options.student_layer]
        losses = []
        for adapter, teacher in zip(self.adapters, teachers, strict=True):
            t_map = teacher.maps[self.options.teacher_layer]
            if t_map.shape[-2:] != s_map.shape[-2:]:
                t_map = F.adaptive_avg_pool2d(t_map, s_map.shape[-2:])
            losses.append(F.mse_loss(adapter(s_map), t_map))
        return {"hint": self.options.weight * torch.stack(losses).mean()}

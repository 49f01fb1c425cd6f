"""`features`: the paper's method. The student's pooled features are mapped by learned
projectors onto each teacher's feature space, and their distance is added to the loss:

    loss term = weight * lambda * sum_k w_k * D(P_k(s), t_k)    (averaged over the batch)

combine = sum: one projector per teacher, w_k = 1/K;
          concat: one projector onto the concatenation of the L2-normalised teacher features
          (each scaled by 1/sqrt(K)), compared as one vector;
          learned: one projector per teacher, w = softmax(alpha) with alpha learned.
distance = mse (on L2-normalised vectors) | cosine | smooth_l1;  projector = linear | mlp.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.methods.base import (
    Method,
    MethodOptions,
    Step,
    StudentOutputs,
    TeacherOutputs,
    projected_distances,
    projector,
    register,
)  # fmt: skip


class FeatureOptions(MethodOptions):
    combine: str = Field("sum", pattern="^(sum|concat|learned)$")
    distance: str = Field("mse", pattern="^(mse|cosine|smooth_l1)$")
    projector: str = Field("linear", pattern="^(linear|mlp)$")
    hidden: int = Field(256, ge=1, description="hidden width of the mlp projector")
    lam: float = Field(1.0, ge=0, alias="lambda", description="lambda: scale of the feature term")

    model_config = {**MethodOptions.model_config, "populate_by_name": True}


@register
class FeatureTransfer(Method):
    name = "features"
    paper = "Landro, Gallo and La Grassa, Algorithms 2021 (the paper mtkd is built on)"
    reads = ("pooled features",)
    trains = "a projector per teacher (linear or mlp), or one on the concatenated features"
    Options = FeatureOptions

    def __init__(self, options: FeatureOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        o = options
        if o.combine == "concat":
            self.projectors = nn.ModuleList(
                [projector(o.projector, student_dim, sum(teacher_dims), o.hidden)]
            )
        else:
            self.projectors = nn.ModuleList(
                projector(o.projector, student_dim, d, o.hidden) for d in teacher_dims
            )
        if o.combine == "learned":
            self.alpha = nn.Parameter(torch.zeros(len(teacher_dims)))

    def teacher_weights(self, device: torch.device | None = None) -> torch.Tensor:
        if self.options.combine == "learned":
            return torch.softmax(self.alpha, dim=0)
        k = len(self.projectors)
        return torch.full((k,), 1.0 / k, device=device)  # made there: a copy to a GPU would wait for it

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        if o.combine == "concat":
            k = len(teachers)
            target = torch.cat([F.normalize(t.features, dim=1) for t in teachers], dim=1) / math.sqrt(k)
            loss = projected_distances(student.features, self.projectors, [target], o.distance).mean()
        else:
            w = self.teacher_weights(student.features.device)
            targets = [t.features for t in teachers]
            dist = projected_distances(student.features, self.projectors, targets, o.distance).mean(1)
            loss = (w * dist).sum()
        return {"features": o.weight * o.lam * loss}

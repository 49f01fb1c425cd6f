"""`camkd`: confidence-aware multi-teacher KD (Zhang, Chen and Wang, ICASSP 2022).

Per sample, w_k = (1 - softmax_k(CE_k)) / (K - 1), with CE_k the cross-entropy of teacher k
on the true label (w_k = 1 for a single teacher). The weights are constants (no gradient).
Terms: weight * mean_b sum_k w_k T^2 KL(teacher_k || student), and, with feature_weight > 0,
feature_weight * mean_b sum_k w_k D(P_k(s), f_k) through one linear projector per teacher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.methods.base import (
    Method,
    MethodOptions,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    projected_distances,
    register,
    softened,
    teacher_logits,
)  # fmt: skip


class CAMKDOptions(MethodOptions):
    temperature: float = Field(4.0, gt=0)
    feature_weight: float = Field(1.0, ge=0, description="weight of the confidence-weighted feature term")
    distance: str = Field("mse", pattern="^(mse|cosine|smooth_l1)$")


def confidence_weights(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[K, B] CA-MKD weights from teachers' logits [K, B, C] and labels [B]."""
    k = logits.shape[0]
    ce = torch.stack([F.cross_entropy(x, labels, reduction="none") for x in logits])
    if k == 1:
        return torch.ones_like(ce)
    return (1 - torch.softmax(ce, dim=0)) / (k - 1)


@register
class ConfidenceAwareKD(Method):
    name = "camkd"
    Options = CAMKDOptions
    needs_logits = True

    def __init__(self, options: CAMKDOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        self.projectors = nn.ModuleList(nn.Linear(student_dim, d) for d in teacher_dims)

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        o = self.options
        logits = teacher_logits(teachers)
        w = confidence_weights(logits, labels).detach()
        kl = torch.stack(
            [kl_per_sample(student.logits, softened(x, o.temperature), o.temperature) for x in logits]
        )
        terms = {"camkd": o.weight * (w * kl).sum(0).mean()}
        if o.feature_weight > 0:
            targets = [t.features for t in teachers]
            dist = projected_distances(student.features, self.projectors, targets, o.distance)
            terms["camkd_features"] = o.feature_weight * (w * dist).sum(0).mean()
        return terms

"""`kd`: Hinton et al. 2015, knowledge distillation from one teacher.

loss = weight * T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the batch.
`standardize: true` z-scores s and t first (logit standardization, see methods.base), T 2, weight 9.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mtkd.methods.base import (
    Method,
    StandardizeOptions,
    Step,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    register,
    softened,
)


class KDOptions(StandardizeOptions):
    temperature: float = Field(4.0, gt=0)


class LogitMethod(Method):
    """Base of the methods that distil the teachers' class probabilities at a temperature."""

    Options = KDOptions
    needs_logits = True


@register
class KD(LogitMethod):
    name = "kd"
    paper = "Hinton, Vinyals and Dean, 2015, Distilling the Knowledge in a Neural Network"
    reads = ("logits",)
    trains = ""
    max_teachers = 1

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        s, teacher = self.logits_of(student.logits), self.logits_of(teachers[0].logits)
        loss = kl_per_sample(s, softened(teacher, t), t).mean()
        return {"kd": self.options.weight * loss}

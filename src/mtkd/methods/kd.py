"""`kd`: Hinton et al. 2015, knowledge distillation from one teacher.

loss = weight * T^2 * KL(softmax(t / T) || softmax(s / T)), averaged over the batch.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mtkd.methods.base import (
    Method,
    MethodOptions,
    Step,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    register,
    softened,
)


class KDOptions(MethodOptions):
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
        loss = kl_per_sample(student.logits, softened(teachers[0].logits, t), t).mean()
        return {"kd": self.options.weight * loss}

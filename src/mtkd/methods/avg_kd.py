"""`avg_kd` (AVER): KD towards the average of the teachers' softened outputs.

loss = weight * T^2 * KL(mean_k softmax(t_k / T) || softmax(s / T)).
"""

from __future__ import annotations

import torch

from mtkd.methods.base import StudentOutputs, TeacherOutputs, kl_per_sample, register, softened
from mtkd.methods.kd import LogitMethod


@register
class AverageKD(LogitMethod):
    name = "avg_kd"

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        target = torch.stack([softened(x.logits, t) for x in teachers]).mean(0)
        return {"avg_kd": self.options.weight * kl_per_sample(student.logits, target, t).mean()}

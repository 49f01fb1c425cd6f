"""`ebkd`: multi-teacher KD with teachers weighted by the entropy of their predictions.

Per sample, a confident teacher (low entropy H_k of softmax(t_k)) counts more:
w_k = softmax_k(-H_k); loss = weight * mean_b sum_k w_k * T^2 * KL(softmax(t_k/T) || softmax(s/T)).
"""

from __future__ import annotations

import torch

from mtkd.methods.base import (
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    register,
    softened,
    teacher_logits,
)
from mtkd.methods.kd import LogitMethod


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """[K, B] weights from teachers' logits [K, B, C]: softmax over teachers of minus the entropy."""
    log_p = torch.log_softmax(logits, dim=2)
    entropy = -(log_p.exp() * log_p).sum(2)
    return torch.softmax(-entropy, dim=0)


@register
class EntropyKD(LogitMethod):
    name = "ebkd"

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        logits = teacher_logits(teachers)
        w = entropy_weights(logits)
        kl = torch.stack([kl_per_sample(student.logits, softened(x, t), t) for x in logits])
        return {"ebkd": self.options.weight * (w * kl).sum(0).mean()}

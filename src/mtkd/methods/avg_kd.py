"""`avg_kd` (AVER): the teachers' KD losses averaged, the multi-teacher baseline of CA-MKD
(Zhang, Chen and Wang, ICASSP 2022; Rorozhl/CA-MKD `helper/loops.py:200-203`, AVERAGE_LOSS):

    loss = weight * mean_k mean_b T^2 KL(softmax(t_k / T) || softmax(s / T))

`average: probabilities` is the other reading of "averaging the teachers": KD towards the mean
of their softened outputs, T^2 KL(mean_k softmax(t_k / T) || softmax(s / T)). Its gradient is
the same; its value is lower by the teachers' disagreement, which does not depend on the student.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mtkd.methods.base import Step, StudentOutputs, TeacherOutputs, kl_per_sample, register, softened
from mtkd.methods.kd import KDOptions, LogitMethod


class AverageOptions(KDOptions):
    average: Literal["losses", "probabilities"] = Field(
        "losses",
        description="losses: mean of the per-teacher KD losses (published); probabilities: KD to the mean",
    )


@register
class AverageKD(LogitMethod):
    name = "avg_kd"
    paper = "AVER, the multi-teacher baseline of Zhang, Chen and Wang, ICASSP 2022 (CA-MKD)"
    reads = ("logits",)
    trains = ""
    Options = AverageOptions

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        s = self.logits_of(student.logits)
        probs = torch.stack([softened(self.logits_of(x.logits), t) for x in teachers])
        if self.options.average == "probabilities":
            loss = kl_per_sample(s, probs.mean(0), t).mean()
        else:
            loss = torch.stack([kl_per_sample(s, p, t) for p in probs]).mean()
        return {"avg_kd": self.options.weight * loss}

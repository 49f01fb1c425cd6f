"""`ebkd`: multi-teacher KD with each teacher weighted per sample by the entropy of its
prediction (Kwon, Na, Lee and Lee, "Adaptive knowledge distillation based on entropy", ICASSP
2020). We found no code from its authors; this is the baseline as CA-MKD's authors published it
(Rorozhl/CA-MKD `helper/loops.py:204-219`): with H_k the entropy of softmax(t_k) (temperature 1),

    w_k = 1 - H_k / sum_j H_j,   loss = weight * sum_{k,b} w_k T^2 KL(softmax(t_k/T) || softmax(s/T)) / (B K)

With one teacher the formula gives it weight 0; the authors' code then runs plain KD
(`train_student.py` sets AVERAGE_LOSS when teacher_num is 1), and so does this (w = 1).
`weighting: softmax` is mtkd's earlier reading: w_k = softmax_k(-H_k), loss = mean_b sum_k w_k KL_k.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from mtkd.methods.base import (
    Step,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    register,
    softened,
    teacher_logits,
)
from mtkd.methods.kd import KDOptions, LogitMethod


class EBKDOptions(KDOptions):
    weighting: Literal["published", "softmax"] = Field(
        "published", description="published: 1 - H_k / sum_j H_j; softmax: softmax_k(-H_k)"
    )


def entropies(logits: torch.Tensor) -> torch.Tensor:
    """[K, B] entropy of each teacher's softmax from logits [K, B, C]."""
    log_p = torch.log_softmax(logits, dim=2)
    return -(log_p.exp() * log_p).sum(2)


def entropy_weights(logits: torch.Tensor) -> torch.Tensor:
    """[K, B] published EBKD weights 1 - H_k / sum_j H_j (1 for a single teacher)."""
    h = entropies(logits)
    return torch.ones_like(h) if len(h) == 1 else 1 - h / h.sum(0)


@register
class EntropyKD(LogitMethod):
    name = "ebkd"
    paper = "Kwon, Na, Lee and Lee, ICASSP 2020, Adaptive KD based on entropy (as CA-MKD publishes it)"
    reads = ("logits",)
    trains = ""
    Options = EBKDOptions

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        t = self.options.temperature
        logits = teacher_logits(teachers)
        s = self.logits_of(student.logits)  # standardize: the KD terms only; the weights read raw logits
        kl = torch.stack([kl_per_sample(s, softened(self.logits_of(x), t), t) for x in logits])
        if self.options.weighting == "softmax":
            loss = (torch.softmax(-entropies(logits), dim=0) * kl).sum(0).mean()
        else:
            loss = (entropy_weights(logits) * kl).mean()  # sum over k and b, over B K
        return {"ebkd": self.options.weight * loss}

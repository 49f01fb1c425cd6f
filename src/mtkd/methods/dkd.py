"""`dkd`: decoupled knowledge distillation (Zhao, Cui, Song, Qiu and Liang, CVPR 2022), as its
authors publish it (megvii-research/mdistiller `mdistiller/distillers/DKD.py:8-32` dkd_loss and
`:65-72` its warm-up). With p the softmax at temperature T, split into the target class and
the rest (b = [p_target, 1 - p_target]) and p^ the softmax over the non-target classes only:

    TCKD = T^2 KL(b_teacher || b_student),   NCKD = T^2 KL(p^_teacher || p^_student)   (batch means)
    dkd  = weight * min(epoch / warmup, 1) * (alpha TCKD + beta NCKD)

Defaults are mdistiller's (alpha 1, beta 8, T 4, warm-up 20 epochs; epochs counted from 1).
With several teachers, mtkd's own extension: the same loss towards the teachers' averaged
softened outputs (for a single teacher, exactly the published loss). mdistiller's masking by
-1000 is written here as exact exclusion of the target class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from mtkd.methods.base import Step, StudentOutputs, TeacherOutputs, register, softened
from mtkd.methods.kd import KDOptions, LogitMethod


class DKDOptions(KDOptions):
    alpha: float = Field(1.0, ge=0, description="weight of the target-class term (TCKD)")
    beta: float = Field(8.0, ge=0, description="weight of the non-target term (NCKD)")
    warmup: float = Field(20.0, ge=0, description="epochs over which the loss grows linearly to full weight")


def _kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of sum_c p log(p / q), with 0 log 0 = 0."""
    return (torch.xlogy(p, p) - p * log_q).sum(1).mean()


def dkd_terms(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each multiplied by T^2, from the student's logits and the teachers' softened probabilities."""
    t = temperature
    target = F.one_hot(labels, student_logits.shape[1]).bool()
    p_s = F.softmax(student_logits / t, dim=1)
    p_s_true = (p_s * target).sum(1, keepdim=True)
    p_t_true = (teacher_probs * target).sum(1, keepdim=True)
    b_s = torch.cat([p_s_true, 1 - p_s_true], 1)
    b_t = torch.cat([p_t_true, 1 - p_t_true], 1)
    tckd = _kl(b_t, torch.log(b_s)) * t**2
    log_rest_s = F.log_softmax((student_logits / t).masked_fill(target, float("-inf")), dim=1)
    rest_t = (teacher_probs * ~target) / (1 - p_t_true)
    nckd = _kl(rest_t, log_rest_s.masked_fill(target, 0.0)) * t**2
    return tckd, nckd


@register
class DecoupledKD(LogitMethod):
    name = "dkd"
    paper = "Zhao, Cui, Song, Qiu and Liang, CVPR 2022, Decoupled Knowledge Distillation"
    reads = ("logits",)
    trains = ""
    Options = DKDOptions
    hard_labels = True  # splits the target class from the rest

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        probs = torch.stack([softened(self.logits_of(x.logits), o.temperature) for x in teachers]).mean(0)
        tckd, nckd = dkd_terms(self.logits_of(student.logits), probs, labels, o.temperature)
        ramp = min(step.epoch / o.warmup, 1.0) if o.warmup > 0 else 1.0
        return {"dkd": o.weight * ramp * (o.alpha * tckd + o.beta * nckd)}

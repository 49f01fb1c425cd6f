"""`dist`: DIST, knowledge distillation from a stronger teacher (Huang, You, Wang, Qian and Xu,
NeurIPS 2022), as its authors publish it: hunto/DIST_KD points to the loss in its classification
submodule, hunto/image_classification_sota at 6f7a70a, `lib/models/losses/dist_kd.py:4-34`.

With y = softmax(z / tau) for the student and a teacher, and rho(a, b) the Pearson correlation
written as their code writes it, the cosine of the mean-centred vectors with eps = 1e-8 added to
the product of the norms (`dist_kd.py:4-10`):

    inter = tau^2 (1 - mean_b rho(y_s[b, :], y_t[b, :]))    each image's distribution over classes
    intra = tau^2 (1 - mean_c rho(y_s[:, c], y_t[:, c]))    each class's scores across the batch
    dist  = weight * (beta * inter + gamma * intra)

It matches relations, not values, so a student need not reproduce a much stronger teacher's
exact probabilities: the case of mtkd's ImageNet teachers and tiny students. Defaults are the
authors' CIFAR-100 settings (`configs/strategies/distill/dist_cifar.yaml`: `kd: dist_t4`,
`kd_loss_weight: 2`, which `lib/models/losses/kd_loss.py:69-71` makes DIST(beta=1, gamma=1, tau=4)):
tau 4, beta 1, gamma 1, weight 2. The intra-class term correlates the batch's rows, so it needs
batches of more than one image (a batch of one gives rho = 0 there, as their code does).

Several teachers (mtkd's extension; the authors distil from one): the mean over teachers of the
per-teacher losses. `standardize: true` z-scores the logits first (logit standardization).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from mtkd.methods.base import Step, StudentOutputs, TeacherOutputs, register, softened
from mtkd.methods.kd import KDOptions, LogitMethod


class DISTOptions(KDOptions):
    weight: float = Field(2.0, ge=0, description="kd_loss_weight of the authors' CIFAR config")
    temperature: float = Field(4.0, gt=0, description="tau")
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation term")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation term")

    # DIST's own tau and weight stay with standardize (logit standardization's 2 and 9 are for KD).
    standardized_defaults: ClassVar[dict[str, float]] = {}


def pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of the rows of a and b: their mean-centred cosine, eps on the norms' product."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_terms(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra), each times tau^2, for one teacher."""
    y_s, y_t = softened(student_logits, tau), softened(teacher_logits, tau)
    inter = (1 - pearson(y_s, y_t).mean()) * tau**2
    intra = (1 - pearson(y_s.t(), y_t.t()).mean()) * tau**2
    return inter, intra


@register
class DIST(LogitMethod):
    name = "dist"
    paper = "Huang, You, Wang, Qian and Xu, NeurIPS 2022, Knowledge Distillation from A Stronger Teacher"
    reads = ("logits",)
    trains = ""
    Options = DISTOptions

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        s = self.logits_of(student.logits)
        losses = []
        for teacher in teachers:
            inter, intra = dist_terms(s, self.logits_of(teacher.logits), o.temperature)
            losses.append(o.beta * inter + o.gamma * intra)
        return {"dist": o.weight * torch.stack(losses).mean()}

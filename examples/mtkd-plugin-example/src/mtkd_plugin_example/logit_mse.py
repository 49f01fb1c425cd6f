"""`logit_mse`: the student's logits regress the teachers' mean logits (Ba and Caruana, NeurIPS 2014)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtkd.methods import Method, StudentOutputs, TeacherOutputs
from mtkd.methods.base import Step


class LogitMSE(Method):
    name = "logit_mse"
    needs_logits = True

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        target = torch.stack([t.logits for t in teachers]).mean(0)
        return {"logit_mse": self.options.weight * F.mse_loss(student.logits, target)}

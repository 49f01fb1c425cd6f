"""`none`: the student alone. It adds no term; the cross-entropy every run has is the whole loss."""

from __future__ import annotations

import torch

from mtkd.methods.base import Method, Step, StudentOutputs, TeacherOutputs, register


@register
class NoTransfer(Method):
    name = "none"
    paper = "the student alone (no transfer)"
    reads = ()
    trains = ""

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        return {}

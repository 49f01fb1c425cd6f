"""`camkd`: confidence-aware multi-teacher KD (Zhang, Chen and Wang, ICASSP 2022), as its
authors published it (Rorozhl/CA-MKD at acc8c2b).

Logit term (`helper/loops.py:220-229`): per sample, w_k = (1 - softmax_k(CE_k)) / (K - 1), with
CE_k the cross-entropy of teacher k on the true label;
    camkd = weight * sum_{k,b} w_k T^2 KL(softmax(t_k/T) || softmax(s/T)) / (B K).

Feature term (`feature: map`, `distiller_zoo/CAMKD.py:18-32`, `models/util.py:53-81` CalWeight,
`models/util.py` Embed): the student's last feature map, average-pooled (or bilinearly resized
up) to each teacher's grid, goes through its own embedding (1x1 conv + BN + ReLU) to the
teacher's channels, e_k; the teacher's frozen classifier applied to e_k gives CE'_k on the label
and the weights v_k = (1 - softmax_k(CE'_k)) / (K - 1), which keep their gradient;
    camkd_features = feature_weight * sum_{k,b} v_k mean_{CHW} (e_k - f_k)^2 / (B K),
with f_k the teacher's last feature map. feature_weight is the authors' beta (50 in their
scripts/run.sh), and the term is left out in the first epoch (`helper/loops.py:304-307`).
One difference: CalWeight resizes the student map it resized for the previous teacher (which
matters only when teachers' grids differ); here each teacher gets the student's own map resized.

With one teacher the authors run plain KD (`train_student.py` sets AVERAGE_LOSS when teacher_num
is 1, and CAMKD.py would divide by K - 1 = 0); here w = v = 1.

`feature: pooled` is mtkd's earlier term: pooled features through a linear projector per
teacher, `distance` between them, weighted by the (detached) logit-term weights, from the
first epoch: feature_weight * mean_b sum_k w_k D(P_k(s), f_k).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods.base import (
    FINAL_MAP,
    Method,
    RunContext,
    StandardizeOptions,
    Step,
    StudentOutputs,
    TeacherOutputs,
    kl_per_sample,
    projected_distances,
    register,
    softened,
    teacher_logits,
)  # fmt: skip


class CAMKDOptions(StandardizeOptions):
    temperature: float = Field(4.0, gt=0)
    feature: Literal["map", "pooled"] = Field(
        "map", description="map: the published term on last feature maps; pooled: mtkd's earlier term"
    )
    feature_weight: float = Field(50.0, ge=0, description="beta: weight of the feature term (0: none)")
    skip_first_epoch: bool = Field(True, description="leave the feature term out in epoch 1 (published)")
    distance: str = Field("mse", pattern="^(mse|cosine|smooth_l1)$", description="feature: pooled only")
    student_layer: str | None = Field(
        None,
        description="feature: map: the student module path whose map is embedded (default: its last map)",
    )

    @model_validator(mode="after")
    def _layer_for_maps(self) -> CAMKDOptions:
        if self.student_layer is not None and self.feature != "map":
            raise ValueError("student_layer is read by feature: map only")
        return self


def confidence_weights(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[K, B] CA-MKD weights from logits [K, B, C] and labels [B] (1 for a single teacher)."""
    k = logits.shape[0]
    ce = torch.stack([F.cross_entropy(x, labels, reduction="none") for x in logits])
    if k == 1:
        return torch.ones_like(ce)
    return (1 - torch.softmax(ce, dim=0)) / (k - 1)


def embedding(student_channels: int, teacher_channels: int) -> nn.Module:
    """CA-MKD's Embed (convs off): 1x1 conv with bias, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(student_channels, teacher_channels, kernel_size=1),
        nn.BatchNorm2d(teacher_channels),
        nn.ReLU(inplace=True),
    )


def embeddings_for(run: RunContext, path: str, teacher_dims: list[int]) -> nn.ModuleList:
    """An embedding per teacher for the student's map at `path` (its channels read from the run),
    drawn from the run's seed."""
    shape = run.student_shapes[path]
    if len(shape) != 3:
        raise MtkdError(f"student layer '{path}' gives {shape}, not a [C, H, W] map")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed * 7_919 + 31)
        return nn.ModuleList(embedding(shape[0], d) for d in teacher_dims)


def student_map(student: StudentOutputs, path: str | None, who: str) -> torch.Tensor:
    """The student's map at `path`, or its last feature map; refused in one line if it is not [B, C, H, W]."""
    fmap = student.maps.get(path) if path is not None else student.fmap
    if fmap is None or fmap.dim() != 4:
        raise MtkdError(
            f"{who} needs a student whose forward_features gives a [B, C, H, W] map "
            "(or a student_layer that does)"
        )
    return fmap


def to_grid(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A feature map on another grid: average-pooled down, or bilinearly resized up."""
    if fmap.shape[-2] >= size[0]:
        return F.adaptive_avg_pool2d(fmap, size)
    return F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)


@register
class ConfidenceAwareKD(Method):
    name = "camkd"
    paper = "Zhang, Chen and Wang, ICASSP 2022, Confidence-Aware Multi-Teacher KD"
    reads = ("logits", "last feature maps")
    trains = "a 1x1 conv + BN + ReLU embedding per teacher (feature: pooled: a linear projector per teacher)"
    Options = CAMKDOptions
    needs_logits = True
    may_skip_parameters = True  # the embeddings sit out the first epoch

    def __init__(self, options: CAMKDOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        self.teacher_dims = list(teacher_dims)
        # A student layer's channels are known once the run starts (setup); the last map's are student_dim.
        self.needs_shapes = options.feature == "map" and options.student_layer is not None
        if options.feature_weight == 0:  # no feature term: nothing to train for it (nor for DDP to wait on)
            pass
        elif options.feature == "map":
            if not self.needs_shapes:
                self.embeddings = nn.ModuleList(embedding(student_dim, d) for d in teacher_dims)
        else:
            self.projectors = nn.ModuleList(nn.Linear(student_dim, d) for d in teacher_dims)

    def teacher_maps(self) -> list[str]:
        on = self.options.feature == "map" and self.options.feature_weight > 0
        return [FINAL_MAP] if on else []

    def student_maps(self) -> list[str]:
        return [self.options.student_layer] if self.needs_shapes else []

    def setup(self, run: RunContext) -> None:
        if self.needs_shapes and self.options.feature_weight > 0:
            self.embeddings = embeddings_for(run, self.options.student_layer, self.teacher_dims)

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        logits = teacher_logits(teachers)
        w = confidence_weights(logits, labels).detach()
        s = self.logits_of(student.logits)  # standardize: the KD terms only; the weights read raw logits
        kl = torch.stack(
            [kl_per_sample(s, softened(self.logits_of(x), o.temperature), o.temperature) for x in logits]
        )
        terms = {"camkd": o.weight * (w * kl).mean()}  # sum over k and b, over B K
        if o.feature_weight == 0 or (o.skip_first_epoch and step.epoch == 1 and o.feature == "map"):
            return terms
        if o.feature == "map":
            terms["camkd_features"] = o.feature_weight * self.map_term(student, teachers, labels)
        else:
            targets = [t.features for t in teachers]
            dist = projected_distances(student.features, self.projectors, targets, o.distance)
            terms["camkd_features"] = o.feature_weight * (w * dist).sum(0).mean()
        return terms

    def map_term(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor
    ) -> torch.Tensor:
        fmap = student_map(student, self.options.student_layer, "camkd feature: map")
        ce, mse = [], []
        for embed, teacher in zip(self.embeddings, teachers, strict=True):
            target = teacher.maps[FINAL_MAP]
            e = embed(to_grid(fmap, tuple(target.shape[-2:])))
            assert teacher.head is not None, "camkd feature: map needs each teacher's classifier"
            ce.append(F.cross_entropy(teacher.head(e), labels, reduction="none"))
            mse.append((e - target).pow(2).flatten(1).mean(1))
        k = len(ce)
        v = (
            torch.ones_like(ce[0]).unsqueeze(0)
            if k == 1
            else (1 - torch.softmax(torch.stack(ce), 0)) / (k - 1)
        )
        return (v * torch.stack(mse)).mean()

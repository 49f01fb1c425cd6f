"""The training loss of a student learning from teachers: cross-entropy plus each method's terms.

Each step, every image of the batch is shown as one of the V cached views (drawn from the
epoch's generator); the student sees exactly the image whose teacher outputs it reads,
from the cache (`cached`) or from the teachers run on the spot (`online`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.cache.teacher_cache import TeacherCache, build_cache, images_for, teacher_identity, view_params
from mtkd.data import Dataset
from mtkd.dist import SINGLE, Dist
from mtkd.engine.builders import load_model
from mtkd.engine.config import TrainConfig
from mtkd.errors import MtkdError
from mtkd.methods import Method, StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import method_class
from mtkd.models.hooks import FeatureHooks, pooled_features
from mtkd.models.teachers import TeacherNet, TeacherSpec


@dataclass
class Teacher:
    name: str
    net: TeacherNet
    sha: str  # identifies its content: architecture, preprocessing, weights (for the cache key)
    has_logits: bool  # adapted to the dataset's classes
    cache: TeacherCache | None = None


def load_teachers(names: list[str], dataset: Dataset, device: torch.device) -> list[Teacher]:
    teachers = []
    for name in names:
        if Path(name).exists():
            net, meta, _ = load_model(name, device)
            if meta["kind"] != "teacher":
                raise MtkdError(f"{name} is a {meta['kind']} checkpoint, not a teacher")
            if meta["data"]["classes"] != dataset.classes:
                raise MtkdError(f"teacher {name} was adapted to other classes than {dataset.name}'s")
            if meta["data"]["channels"] != dataset.channels:
                kinds = {1: "grey", 3: "colour"}
                raise MtkdError(
                    f"teacher {name} was adapted to {kinds.get(meta['data']['channels'])} images and "
                    f"{dataset.name} has {kinds.get(dataset.channels)} ones: adapt it on this dataset"
                )
            teachers.append(Teacher(name, net, teacher_identity(net), True))
        elif "/" in name.removeprefix("timm:").removeprefix("torchvision:") or name.endswith(".json"):
            raise MtkdError(f"teacher checkpoint not found: {name}")
        else:
            net = TeacherNet(TeacherSpec(name, head="imagenet")).to(device).eval()
            teachers.append(Teacher(name, net, teacher_identity(net), False))
        for p in teachers[-1].net.parameters():
            p.requires_grad_(False)
    return teachers


class StudentStep(nn.Module):
    """The student and the methods' trainable parts as one module (what DDP wraps under torchrun):
    normalised images and the teachers' outputs in, the student's logits and the loss terms
    (cross-entropy, then each method's) out."""

    def __init__(
        self, student: nn.Module, methods: nn.ModuleList, hooks: FeatureHooks | None, ce_weight: float,
        label_smoothing: float,
    ):  # fmt: skip
        super().__init__()
        self.student, self.methods = student, methods
        self.hooks = hooks
        self.ce_weight, self.label_smoothing = ce_weight, label_smoothing

    def forward(
        self, images: torch.Tensor, teachers: list[TeacherOutputs], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled, logits = pooled_features(self.student, images)
        maps = self.hooks.outputs if self.hooks else {}
        student = StudentOutputs(logits=logits, features=pooled, maps=maps)
        # The cross-entropy first: the order in which terms enter the graph decides the order in
        # which their gradients are summed, and so the last bits of every result.
        ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        terms: dict[str, torch.Tensor] = {"ce": self.ce_weight * ce}
        for method in self.methods:
            terms.update(method(student, teachers, target))
        return logits, terms


class TransferLoss:
    """The step loss of a student with teachers and methods (see trainer.StepLoss)."""

    def __init__(
        self, student: nn.Module, methods: nn.ModuleList, teachers: list[Teacher], dataset: Dataset,
        normalize: nn.Module, cfg: TrainConfig, hflip: bool, device: torch.device, place: Dist = SINGLE,
    ):  # fmt: skip
        t = cfg.transfer
        self.teachers = teachers
        self.normalize, self.device = normalize, device
        images = dataset.train.images
        self.views = t.views
        self.params = view_params(len(images), t.views, cfg.train.crop_padding, hflip, t.view_seed)
        student_paths = sorted({p for m in methods for p in m.student_maps()})
        self.teacher_paths = sorted({p for m in methods for p in m.teacher_maps()})
        if self.teacher_paths and t.teacher_mode == "cached":
            raise MtkdError(
                "methods that read teachers' intermediate maps (hint) need transfer.teacher_mode: online"
            )
        hooks = FeatureHooks(student, student_paths) if student_paths else None
        self.module = StudentStep(student, methods, hooks, t.ce_weight, cfg.train.label_smoothing)
        self.teacher_hooks = (
            [FeatureHooks(x.net, self.teacher_paths) for x in teachers] if self.teacher_paths else []
        )
        if t.teacher_mode == "cached":
            for teacher in teachers:
                teacher.cache = build_cache(
                    teacher.net, teacher.sha, images, dataset.train.labels, t.views, cfg.train.crop_padding,
                    hflip, t.view_seed, t.cache_dtype, teacher.has_logits, device, f"teacher {teacher.name}", place,
                )  # fmt: skip

    def teacher_outputs(
        self, views: torch.Tensor, index: torch.Tensor, images: torch.Tensor
    ) -> list[TeacherOutputs]:
        out = []
        for k, teacher in enumerate(self.teachers):
            if teacher.cache is not None:
                feats, logits = teacher.cache.get(views, index)
                feats = feats.to(self.device)
                logits = logits.to(self.device) if logits is not None else None
            else:
                with torch.inference_mode():
                    fmap = teacher.net.forward_features(images.float() / 255.0)
                    feats = teacher.net.forward_head(fmap, pre_logits=True).clone()
                    logits = teacher.net.forward_head(fmap).clone() if teacher.has_logits else None
            maps = (
                {p: m.clone() for p, m in self.teacher_hooks[k].outputs.items()} if self.teacher_hooks else {}
            )
            out.append(TeacherOutputs(features=feats, logits=logits, maps=maps))
        return out

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Which cached view each row of the step's global batch is shown as."""
        return torch.randint(0, self.views, (n,), generator=gen)

    def __call__(
        self,
        net: nn.Module,
        index: torch.Tensor,
        batch: torch.Tensor,
        target: torch.Tensor,
        views: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = images_for(batch, index, views.to(batch.device), self.params)
        teachers = self.teacher_outputs(views, index, images)
        return net(self.normalize(images), teachers, target)


def build_methods(
    cfg: TrainConfig, student_dim: int, teachers: list[Teacher], num_classes: int
) -> nn.ModuleList:
    specs = cfg.transfer.method_specs()
    dims = [t.net.num_features for t in teachers]
    have_logits = all(t.has_logits for t in teachers)
    methods: list[Method] = []
    for name, options in specs:
        method_class(name)  # an unknown name is reported before anything else
        if name != "none" and not teachers:
            raise MtkdError(f"method '{name}' needs teachers: set transfer.teachers (--teachers)")
        methods.append(build_method(name, options, student_dim, dims, num_classes, have_logits))
    return nn.ModuleList(methods)

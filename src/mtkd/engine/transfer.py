"""The training loss of a student learning from teachers: cross-entropy plus each method's terms.

Each step, every image of the batch is shown as one of the V cached views (drawn from the
epoch's generator); the student sees exactly the image whose teacher outputs it reads,
from the cache (`cached`) or from the teachers run on the spot (`online`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.data import Dataset
from mtkd.dist import SINGLE, Dist
from mtkd.engine.builders import ImageTransform, augment_of, student_groups
from mtkd.engine.config import TrainConfig
from mtkd.engine.trainer import Task, mixed
from mtkd.errors import MtkdError
from mtkd.methods import Method, StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import RunContext, Step, method_class
from mtkd.models.adapters import OutputsView
from mtkd.models.hooks import FeatureHooks, check_path
from mtkd.teachers import CacheSpec, Teacher
from mtkd.teachers.cache import images_for, view_params


class StudentStep(nn.Module):
    """The student and the methods' trainable parts as one module (what DDP wraps under torchrun):
    normalised images and the teachers' outputs in, the student's logits and the loss terms
    (cross-entropy, then each method's) out."""

    def __init__(
        self, student: nn.Module, view: OutputsView, methods: nn.ModuleList, hooks: FeatureHooks | None,
        ce_weight: float, label_smoothing: float,
    ):  # fmt: skip
        super().__init__()
        self.student, self.methods = student, methods
        self.view, self.hooks = view, hooks
        self.ce_weight, self.label_smoothing = ce_weight, label_smoothing

    def forward(
        self, images: torch.Tensor, teachers: list[TeacherOutputs], target: torch.Tensor, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        fmap, pooled, logits = self.view(images)
        maps = self.hooks.outputs if self.hooks else {}
        student = StudentOutputs(logits=logits, features=pooled, maps=maps, fmap=fmap)
        # The cross-entropy first: the order in which terms enter the graph decides the order in
        # which their gradients are summed, and so the last bits of every result.
        ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)
        terms: dict[str, torch.Tensor] = {"ce": self.ce_weight * ce}
        for method in self.methods:
            terms.update(method(student, teachers, target, step))
        return logits, terms


class TransferLoss:
    """The step loss of a student with teachers and methods (see trainer.StepLoss): each row of
    the batch as its drawn view, each teacher's outputs for it, then the StudentStep. It does no
    I/O: the teachers come prepared (`prepare_teachers`)."""

    def __init__(
        self, teachers: list[Teacher], dataset: Dataset, normalize: nn.Module, cfg: TrainConfig, hflip: bool,
        device: torch.device,
    ):  # fmt: skip
        t = cfg.transfer
        self.teachers = teachers
        self.normalize, self.device = normalize, device
        self.classes = dataset.num_classes
        images = dataset.train.images
        self.views, self.online = t.views, t.teacher_mode == "online"
        self.augment = augment_of(cfg.train, hflip, dataset.mean)
        self.size = (int(images.shape[-2]), int(images.shape[-1]))
        # Cached teachers: V views per image, each one draw of the pipeline from (view_seed, v).
        self.params = (
            [] if self.online else view_params(len(images), t.views, self.augment, t.view_seed, self.size)
        )

    def to(self, device: torch.device) -> TransferLoss:
        """Run the step on `device`: the normalisation and each teacher (see Teacher.to)."""
        self.device = device
        self.normalize.to(device)
        for teacher in self.teachers:
            teacher.to(device)
        return self

    def teacher_outputs(
        self, views: torch.Tensor | None, index: torch.Tensor, images: torch.Tensor
    ) -> list[TeacherOutputs]:
        return [teacher.outputs(views, index, images) for teacher in self.teachers]

    def draw(self, n: int, gen: torch.Generator) -> Any:
        """Cached teachers: which view each row of the step's global batch is shown as. Online
        teachers: a fresh draw of the pipeline (and the batch's mix), like a student alone."""
        if self.online:
            return self.augment.draw(n, self.size, gen)
        return torch.randint(0, self.views, (n,), generator=gen)

    def __call__(
        self,
        net: nn.Module,
        index: torch.Tensor,
        batch: torch.Tensor,
        target: torch.Tensor,
        drawn: Any,
        step: Step,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.online:
            images = drawn.apply(batch) if drawn is not None else batch
            images, target = mixed(images, target, drawn, self.classes)
            teachers = self.teacher_outputs(None, index, images)
        else:
            images = images_for(batch, index, drawn, self.params)
            teachers = self.teacher_outputs(drawn, index, images)
        return net(self.normalize(images), teachers, target, step)


def prepare_teachers(
    teachers: list[Teacher], methods: nn.ModuleList, dataset: Dataset, cfg: TrainConfig, hflip: bool,
    device: torch.device, place: Dist = SINGLE, student: nn.Module | None = None,
) -> None:  # fmt: skip
    """The run's teacher stage: cached teachers find or build their caches (the views of the run's
    augmentation, the maps its methods read); online teachers hook those maps. The student's and
    the teachers' module paths are checked first, before any cache is built."""
    t = cfg.transfer
    if student is not None:
        for path in sorted({p for m in methods for p in m.student_maps()}):
            check_path(student, path, "student: ")
    maps = [tuple(sorted({p for m in methods for p in m.teacher_maps_of(k)})) for k in range(len(teachers))]
    for teacher, paths in zip(teachers, maps, strict=True):  # every refusal before any cache is built
        teacher.check(paths)
    spec, a = None, augment_of(cfg.train, hflip, dataset.mean)
    for teacher, paths in zip(teachers, maps, strict=True):
        if t.teacher_mode == "cached":
            spec = CacheSpec(
                t.views, a.padding, a.hflip, t.view_seed, t.cache_dtype, teacher.has_logits, paths,
                a if a.beyond_crop_flip else None,
            )  # fmt: skip
        teacher.prepare(dataset.train, spec, paths, device, place)


def transfer_task(
    student: nn.Module, view: OutputsView, methods: nn.ModuleList, teachers: list[Teacher], dataset: Dataset,
    normalize: nn.Module, cfg: TrainConfig, hflip: bool, device: torch.device,
) -> Task:  # fmt: skip
    """The Task of a student learning from teachers: it trains the student and the methods' parts
    together, is evaluated and saved as the student alone; the methods' parts live in the resume state."""
    student_paths = sorted({p for m in methods for p in m.student_maps()})
    hooks = FeatureHooks(student, student_paths) if student_paths else None
    unprepared = [t.name for t in teachers if not t.prepared]
    if unprepared:
        raise MtkdError(f"teachers {', '.join(unprepared)} are not prepared: call prepare_teachers first")
    setup_methods(methods, student, view, hooks, teachers, dataset, cfg.train.seed, device)
    step = StudentStep(student, view, methods, hooks, cfg.transfer.ce_weight, cfg.train.label_smoothing)
    loss = TransferLoss(teachers, dataset, normalize, cfg, hflip, device)
    if cfg.transfer.teacher_mode == "cached":
        loss.to(device)
    groups = student_groups(student, cfg.model, list(methods.parameters()))
    transform = ImageTransform(normalize)
    skips = any(m.may_skip_parameters for m in methods)
    return Task(step, loss, student, transform, student, groups, methods, skips)


def setup_methods(
    methods: nn.ModuleList, student: nn.Module, view: OutputsView, hooks: FeatureHooks | None,
    teachers: list[Teacher], dataset: Dataset, seed: int, device: torch.device,
) -> None:  # fmt: skip
    """Each method's `setup` with what it needs of the run (RunContext); the shapes of the maps
    it reads come from one pass of the student (eval mode: nothing learns) and from each teacher
    (its cache, or one pass), for the methods that ask for them. Whatever they build moves to
    `device`."""
    student_shapes: dict[str, tuple[int, ...]] = {}
    teacher_shapes: list[dict[str, tuple[int, ...]]] = []
    if any(m.needs_shapes for m in methods):
        images = dataset.train.images[:2]
        if hooks is not None:
            was_training = student.training
            student.eval()
            with torch.no_grad():
                view(torch.zeros(images.shape, device=device))
            student.train(was_training)
            student_shapes = {p: tuple(t.shape[1:]) for p, t in hooks.outputs.items()}
            hooks.outputs.clear()
        teacher_shapes = [t.map_shapes(images) for t in teachers]
    run = RunContext(dataset.train.labels, seed, student_shapes, teacher_shapes)
    for method in methods:
        method.setup(run)
    methods.to(device)


def build_methods(
    cfg: TrainConfig, student_dim: int, teachers: list[Teacher], num_classes: int
) -> nn.ModuleList:
    specs = cfg.transfer.method_specs()
    dims = [t.net.num_features for t in teachers]
    have_logits = all(t.has_logits for t in teachers)
    methods: list[Method] = []
    mixes = cfg.train.augment.mixup > 0 or cfg.train.augment.cutmix > 0
    if mixes and teachers and cfg.transfer.teacher_mode == "cached":
        raise MtkdError(
            "train.augment.mixup / cutmix mix pairs of images that cached teachers never saw: "
            "set transfer.teacher_mode: online (or train the student without teachers)"
        )
    for name, options in specs:
        cls = method_class(name)  # an unknown name is reported before anything else
        if name != "none" and not teachers:
            raise MtkdError(f"method '{name}' needs teachers: set transfer.teachers (--teachers)")
        if mixes and cls.hard_labels:
            raise MtkdError(
                f"method '{name}' needs one class per image, which mixup / cutmix take away: "
                "set train.augment.mixup and cutmix to 0 for it"
            )
        method = build_method(name, options, student_dim, dims, num_classes, have_logits)
        method.teacher_names = [t.arch for t in teachers]
        methods.append(method)
    return nn.ModuleList(methods)

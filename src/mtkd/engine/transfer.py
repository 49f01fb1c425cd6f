"""The training loss of a student learning from teachers: cross-entropy plus each method's terms.

Each step, every image of the batch is shown as one of the V cached views (drawn from the
epoch's generator); the student sees exactly the image whose teacher outputs it reads,
from the cache (`cached`) or from the teachers run on the spot (`online`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.cache.teacher_cache import (
    CacheSpec,
    TeacherCache,
    build_cache,
    images_for,
    teacher_identity,
    teacher_images,
    view_params,
)
from mtkd.data import Dataset
from mtkd.dist import SINGLE, Dist
from mtkd.engine.builders import ImageTransform, augment_of, load_model
from mtkd.engine.config import TeacherRef, TrainConfig
from mtkd.engine.device import fits_on
from mtkd.engine.trainer import Task, mixed
from mtkd.errors import MtkdError
from mtkd.methods import Method, StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import FINAL_MAP, Step, method_class
from mtkd.models.adapters import ModuleTeacher, OutputsView, as_teacher, plugin_teacher
from mtkd.models.hooks import FeatureHooks
from mtkd.models.teachers import TeacherNet, TeacherSpec


@dataclass
class Teacher:
    name: str
    net: TeacherNet | ModuleTeacher
    sha: str  # identifies its content: architecture, preprocessing, weights (for the cache key)
    has_logits: bool  # adapted to the dataset's classes
    # Shown an image folder's original files at its input size (for its cache), not the run's small
    # copies: ImageNet teachers and probe-adapted ones; not those fine-tuned on the small copies.
    reads_files: bool = False
    cache: TeacherCache | None = None
    # How the run's config records it: as given, or a module given from Python by class and content.
    recorded: str | dict | None = None


def _checkpoint_teacher(path: str, dataset: Dataset, device: torch.device) -> Teacher:
    net, meta, _ = load_model(path, device)
    if meta["kind"] != "teacher":
        raise MtkdError(f"{path} is a {meta['kind']} checkpoint, not a teacher")
    if meta["data"]["classes"] != dataset.classes:
        raise MtkdError(f"teacher {path} was adapted to other classes than {dataset.name}'s")
    if meta["data"]["channels"] != dataset.channels:
        kinds = {1: "grey", 3: "colour"}
        raise MtkdError(
            f"teacher {path} was adapted to {kinds.get(meta['data']['channels'])} images and "
            f"{dataset.name} has {kinds.get(dataset.channels)} ones: adapt it on this dataset"
        )
    return Teacher(path, net, teacher_identity(net), True, meta["model"].get("inputs") == "files")


def _module_teacher(net: ModuleTeacher, name: str, dataset: Dataset, device: torch.device) -> Teacher:
    net = net.to(device).eval()
    net.bind(dataset.channels, dataset.image_size)
    return Teacher(
        name, net, teacher_identity(net), net.num_outputs == dataset.num_classes, net.input_size is not None
    )


def load_teachers(
    entries: list[str | TeacherRef | nn.Module], dataset: Dataset, device: torch.device
) -> list[Teacher]:
    """Teachers from run folders of `mtkd teacher fit`, plugin teachers, ImageNet models by name
    (with their input size and weights), and modules given from Python."""
    teachers = []
    for entry in entries:
        if isinstance(entry, nn.Module):
            net = as_teacher(entry, type(entry).__name__)
            teacher = _module_teacher(net, net.name, dataset, device)
            teacher.recorded = f"python:{net.name}@{teacher.sha[:16]}"
            teachers.append(teacher)
            continue
        ref = entry if isinstance(entry, TeacherRef) else TeacherRef(name=entry)
        name = ref.name
        if name.startswith("python:"):
            raise MtkdError(
                f"teacher '{name}' was given as a Python module: pass the module again (mtkd.train(teachers=[...])), "
                "or register it by name (a mtkd.teachers plugin)"
            )
        if Path(name).exists():
            if ref.input_size is not None or ref.pretrained != "auto":
                raise MtkdError(
                    f"teacher {name}: an adapted teacher keeps the input size and weights it was fitted with"
                )
            teachers.append(_checkpoint_teacher(name, dataset, device))
        elif (module := plugin_teacher(name)) is not None:
            if ref.input_size is not None:
                module.input_size = ref.input_size
            teachers.append(_module_teacher(module, name, dataset, device))
        elif "/" in name.removeprefix("timm:").removeprefix("torchvision:") or name.endswith(".json"):
            raise MtkdError(f"teacher checkpoint not found: {name}")
        else:
            spec = TeacherSpec(name, pretrained=ref.pretrained, input_size=ref.input_size, head="imagenet")
            net = TeacherNet(spec).to(device).eval()
            teachers.append(Teacher(name, net, teacher_identity(net), False, True))
        teachers[-1].recorded = (
            entry if isinstance(entry, str) else ref.model_dump(mode="json", exclude_defaults=True)
        )
    for t in teachers:
        for p in t.net.parameters():
            p.requires_grad_(False)
    return teachers


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
    the batch as its drawn view, the teachers' outputs for it, then the StudentStep."""

    def __init__(
        self, methods: nn.ModuleList, teachers: list[Teacher], dataset: Dataset, normalize: nn.Module,
        cfg: TrainConfig, hflip: bool, device: torch.device, place: Dist = SINGLE,
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
        self.teacher_paths = tuple(sorted({p for m in methods for p in m.teacher_maps()}))
        if FINAL_MAP in self.teacher_paths:
            for x in teachers:
                if not isinstance(x.net, TeacherNet):
                    raise MtkdError(
                        f"teacher {x.name}: camkd's feature: map reads an mtkd teacher's last feature map and "
                        "classifier; with a teacher module use camkd with feature: pooled"
                    )
        self.may_skip_parameters = any(m.may_skip_parameters for m in methods)
        self.teacher_hooks = []
        if t.teacher_mode == "cached":
            for teacher in teachers:
                a = self.augment
                spec = CacheSpec(
                    t.views, a.padding, a.hflip, t.view_seed, t.cache_dtype, teacher.has_logits, self.teacher_paths,
                    a if a.beyond_crop_flip else None,
                )  # fmt: skip
                size = teacher.net.input_size if teacher.reads_files else None
                teacher.cache = build_cache(
                    teacher.net, teacher.sha, teacher_images(dataset.train, size), spec, device,
                    f"teacher {teacher.name}", place,
                )  # fmt: skip
            self.to(device)
        elif self.teacher_paths:
            self.teacher_hooks = [FeatureHooks(x.net, list(self.teacher_paths)) for x in teachers]

    def to(self, device: torch.device) -> TransferLoss:
        """Run the step on `device`: the normalisation there, each teacher cache's tables too when
        they fit in a quarter of its free memory (CUDA; on the CPU they stay memory-mapped), and
        cached teachers' backbones on the host."""
        self.device = device
        self.normalize.to(device)
        for teacher in self.teachers:
            if teacher.cache is None:
                continue
            if fits_on(device, teacher.cache.nbytes):
                teacher.cache.to(device)
            # Its outputs are in the cache: only camkd's map term still calls a part of it (the
            # classifier head, on the device); the backbone leaves the device.
            if FINAL_MAP in self.teacher_paths:  # an mtkd TeacherNet (checked above)
                for name, part in teacher.net.named_children():
                    part.to("cpu" if name == "body" else device)
            else:
                teacher.net.to("cpu")
        return self

    def teacher_outputs(
        self, views: torch.Tensor | None, index: torch.Tensor, images: torch.Tensor
    ) -> list[TeacherOutputs]:
        out = []
        for k, teacher in enumerate(self.teachers):
            head = getattr(teacher.net, "forward_head", None) if teacher.has_logits else None
            if teacher.cache is not None:
                rows = teacher.cache.get(views, index, self.device)
                maps = {p: rows[f"map.{p}"] for p in self.teacher_paths}
                out.append(TeacherOutputs(rows["features"], rows.get("logits"), maps, head))
                continue
            # no_grad, not inference_mode: the outputs are saved for the backward pass of some terms.
            with torch.no_grad():
                feats, logits = teacher.net.pooled_and_logits(images.float() / 255.0, teacher.has_logits)
            maps = dict(self.teacher_hooks[k].outputs) if self.teacher_hooks else {}
            out.append(TeacherOutputs(feats, logits, maps, head))
        return out

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


def transfer_task(
    student: nn.Module, view: OutputsView, methods: nn.ModuleList, teachers: list[Teacher], dataset: Dataset,
    normalize: nn.Module, cfg: TrainConfig, hflip: bool, device: torch.device, place: Dist = SINGLE,
) -> Task:  # fmt: skip
    """The Task of a student learning from teachers: it trains the student and the methods' parts
    together, is evaluated and saved as the student alone; the methods' parts live in the resume state."""
    student_paths = sorted({p for m in methods for p in m.student_maps()})
    hooks = FeatureHooks(student, student_paths) if student_paths else None
    step = StudentStep(student, view, methods, hooks, cfg.transfer.ce_weight, cfg.train.label_smoothing)
    loss = TransferLoss(methods, teachers, dataset, normalize, cfg, hflip, device, place)
    trainable = [p for p in student.parameters() if p.requires_grad] + list(methods.parameters())
    transform = ImageTransform(normalize)
    return Task(step, loss, student, transform, student, [{"params": trainable}], methods)


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
        methods.append(build_method(name, options, student_dim, dims, num_classes, have_logits))
    return nn.ModuleList(methods)

"""Batch transforms, models rebuilt from checkpoint metadata, and a run's teachers from its config."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.data.augment import Augment, Drawn
from mtkd.data.base import Dataset
from mtkd.data.batches import Normalize
from mtkd.engine.checkpoint import load_weights, read_meta
from mtkd.engine.config import LoopConfig, StudentConfig, TeacherRef
from mtkd.engine.trainer import Transform
from mtkd.errors import MtkdError
from mtkd.models.adapters import final_linear
from mtkd.models.zoo import create_student
from mtkd.teachers import ModuleTeacher, Teacher, TeacherNet, TeacherSpec
from mtkd.teachers.modules import as_teacher, plugin_teacher


def augment_of(loop: LoopConfig, hflip: bool, mean: list[float]) -> Augment:
    """The training augmentation a run's `train` section asks for (`hflip` settled for the dataset;
    erased boxes and rotated borders take the dataset's mean colour)."""
    a = loop.augment
    return Augment(
        padding=loop.crop_padding, hflip=hflip, crop=a.crop, scale=tuple(a.scale), ratio=tuple(a.ratio),
        auto=a.auto, ops=a.ops, magnitude=a.magnitude, jitter=a.jitter, erasing=a.erasing,
        fill=tuple(round(255 * m) for m in mean), mixup=a.mixup, cutmix=a.cutmix,
    )  # fmt: skip


class ImageTransform:
    """uint8 batches -> model inputs; augmented when given drawn choices (training).

    With `normalize` the output is normalised with the dataset's statistics (students); without,
    it is in [0, 1] (teachers, which normalise for themselves). A batch mix (mixup, cutmix) is not
    applied here but by the step, which mixes the labels too.
    """

    def __init__(
        self, normalize: nn.Module | None, augment: Augment | None = None, size: tuple[int, int] = (0, 0)
    ):
        self.normalize, self.augment, self.size = normalize, augment or Augment(), tuple(size)

    def draw(self, n: int, gen: torch.Generator) -> Drawn | None:
        """The choices for n images of the training size (`size`)."""
        return self.augment.draw(n, self.size, gen)

    def __call__(self, x: torch.Tensor, drawn: Any = None) -> torch.Tensor:
        if drawn is not None:
            x = drawn.apply(x)
        return self.normalize(x) if self.normalize is not None else x.float() / 255.0


def student_groups(student: nn.Module, model: StudentConfig, extra: list[nn.Parameter]) -> list[dict]:
    """The optimizer's parameter groups of a student (and the methods' `extra` parameters, at the
    full lr): `model.freeze` prefixes left out, every layer but the classifier at lr x
    `model.backbone_lr_scale` (one group when that is 1)."""
    named = dict(student.named_parameters())
    for prefix in model.freeze:
        matched = [n for n in named if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            raise MtkdError(
                f"model.freeze: no parameters under '{prefix}' in {model.name} (names look like '{next(iter(named))}')"
            )
        for n in matched:
            named[n].requires_grad_(False)
    trainable = [p for p in named.values() if p.requires_grad]
    if model.backbone_lr_scale == 1:
        return [{"params": trainable + extra}]
    get = getattr(student, "get_classifier", None)
    head_module = get() if callable(get) else student.get_submodule(final_linear(student))
    head = {id(p) for p in head_module.parameters()}
    return [
        {"params": [p for p in trainable if id(p) in head] + extra},
        {"params": [p for p in trainable if id(p) not in head], "lr_scale": model.backbone_lr_scale},
    ]


def build_model(meta: dict) -> nn.Module:
    """The architecture a checkpoint describes, with random weights."""
    spec, data = meta["model"], meta["data"]
    if meta["kind"] == "student":
        if spec["name"].startswith("python:"):
            raise MtkdError(
                f"the student of {meta.get('_path', 'this checkpoint')} was given from Python as a module "
                f"({spec.get('class', spec['name'][7:])}): load it with mtkd.load_student(path, model=<a module of "
                "that architecture>), or train it by a registered name (a mtkd.students plugin)"
            )
        name = spec["name"]
        if name.startswith("hf-hub:") and spec.get("architecture"):  # rebuilt without the Hub
            name = f"timm:{spec['architecture']}"
        return create_student(name, len(data["classes"]), data["channels"])
    if meta["kind"] == "teacher":
        known = {f.name for f in fields(TeacherSpec)}
        return TeacherNet(
            TeacherSpec(**{k: v for k, v in spec.items() if k in known} | {"pretrained": "none"})
        )
    raise MtkdError(f"unknown checkpoint kind '{meta['kind']}'")


def load_model(
    path: str, device: torch.device, model: nn.Module | None = None
) -> tuple[nn.Module, dict, Transform]:
    """(model with its trained weights in eval mode, checkpoint metadata, evaluation transform);
    `model`: the architecture to load the weights into instead of the one the checkpoint names."""
    meta = read_meta(path)
    model = model if model is not None else build_model(meta)
    weights = load_weights(meta)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise MtkdError(
            f"checkpoint {meta['_path']} does not fit {meta['model']['name']}: {str(exc).splitlines()[0]}"
        ) from None
    model.to(device).eval()
    normalize = (
        Normalize(meta["data"]["mean"], meta["data"]["std"]).to(device) if meta["kind"] == "student" else None
    )
    return model, meta, ImageTransform(normalize)


class Normalised(nn.Module):
    """A classifier with its input normalisation built in: float images in [0, 1], [N, C, H, W]."""

    def __init__(self, model: nn.Module, mean: list[float] | None, std: list[float] | None):
        super().__init__()
        self.model = model
        self.normalise = mean is not None
        if mean is not None:
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) / self.std if self.normalise else images
        return self.model(x)


def load_deployable(
    path: str, device: torch.device, model: nn.Module | None = None
) -> tuple[Normalised, dict]:
    """A checkpoint's model ready for inference on float images in [0, 1] (students normalise
    inside, teachers already do), in eval mode, with its metadata."""
    net, meta, _ = load_model(path, device, model)
    student = meta["kind"] == "student"
    data = meta["data"]
    wrapped = Normalised(net, data["mean"] if student else None, data["std"] if student else None)
    return wrapped.to(device).eval(), meta


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
    # A teacher fine-tuned on the run's small copies is shown them later too; a probe, the files.
    return Teacher(path, net, True, meta["model"].get("inputs") == "files")


def _module_teacher(net: ModuleTeacher, name: str, dataset: Dataset, device: torch.device) -> Teacher:
    net = net.to(device).eval()
    net.bind(dataset.channels, dataset.image_size)
    return Teacher(name, net, net.num_outputs == dataset.num_classes, net.input_size is not None)


def load_teachers(
    entries: list[str | TeacherRef | nn.Module], dataset: Dataset, device: torch.device
) -> list[Teacher]:
    """A run's teachers (not yet prepared): run folders of `mtkd teacher fit`, plugin teachers,
    ImageNet models by name (with their input size and weights), and modules given from Python."""
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
            teachers.append(Teacher(name, TeacherNet(spec).to(device).eval(), False, True))
        teachers[-1].recorded = (
            entry if isinstance(entry, str) else ref.model_dump(mode="json", exclude_defaults=True)
        )
    return teachers

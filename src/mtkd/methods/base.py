"""What every transfer method shares: its inputs, its output, and the registry of names.

A method is an `nn.Module` called with the student's outputs, the teachers' outputs for the
same images, the labels and where training is (`Step`: a warm-up or a first-epoch skip lives
in the method's own file); it returns a dict of named, already weighted loss terms. Its
parameters (projectors, adapters, learned weights) train with the student and are never
part of the saved student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods.projected import projected_cosines
from mtkd.registry import Registry


@dataclass
class StudentOutputs:
    logits: torch.Tensor  # [B, classes]
    features: torch.Tensor  # pooled penultimate features [B, D]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # hooked maps by module path
    fmap: torch.Tensor | None = None  # the last feature map, before pooling [B, C, H, W]


@dataclass
class TeacherOutputs:
    features: torch.Tensor  # pooled features [B, D_k]
    logits: torch.Tensor | None = None  # [B, classes] of an adapted teacher; None for a raw ImageNet one
    maps: dict[str, torch.Tensor] = field(default_factory=dict)  # by module path; FINAL_MAP: the last map
    head: Callable[[torch.Tensor], torch.Tensor] | None = None  # the frozen classifier: last map -> logits


FINAL_MAP = "body"  # a teacher's module whose output is its last feature map (TeacherNet.body)


@dataclass(frozen=True)
class Step:
    """Where training is: epoch (from 1) and step (from 0) within it, and the lengths of both;
    `index`: the training-split rows of this process's batch (methods that keep a state per
    training image, CRD's memory, read it)."""

    epoch: int = 1
    step: int = 0
    steps_per_epoch: int = 1
    epochs: int = 1
    index: torch.Tensor | None = None


@dataclass(frozen=True)
class RunContext:
    """What a method may need of the run before it trains (`Method.setup`): the training split's
    classes, the run's seed (whatever a method draws derives from it, never from the global RNG),
    and the shape of one image's map at each module path the method reads, the student's and each
    teacher's (`needs_shapes` methods only)."""

    labels: torch.Tensor  # [N] classes of the training split
    seed: int = 0
    student_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    teacher_shapes: list[dict[str, tuple[int, ...]]] = field(default_factory=list)


class MethodOptions(BaseModel):
    """Options every method takes; each method adds its own."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(1.0, ge=0, description="multiplies every loss term of the method")


class StandardizeOptions(MethodOptions):
    """Options of a method that distils logits, with logit standardization (Sun, Ren, Gao, Guo, Wu and
    Cao, CVPR 2024, "Logit Standardization in Knowledge Distillation"; sunshangquan/
    logit-standardization-KD at f6e5aa5): with `standardize: true` every logit vector the method
    softens, the student's and each teacher's, is z-scored first (`mdistiller/distillers/KD.py:7-10`:
    minus its mean, over 1e-7 + its unbiased standard deviation). Temperature and weight not given
    then take the authors' CIFAR values, `--base-temp 2 --kd-weight 9` (their README's commands,
    applied by `tools/train.py:110-121`; for DKD the 9 multiplies alpha and beta, as `weight` does)."""

    standardize: bool = Field(
        False, description="z-score the logits before the temperature (logit standardization)"
    )
    standardized_defaults: ClassVar[dict[str, float]] = {"temperature": 2.0, "weight": 9.0}

    @model_validator(mode="after")
    def _standardized_defaults(self) -> StandardizeOptions:
        if self.standardize:
            for key, value in self.standardized_defaults.items():
                if key not in self.model_fields_set:
                    setattr(self, key, value)
        return self


def standardized(logits: torch.Tensor) -> torch.Tensor:
    """Each row z-scored: (z - mean) / (1e-7 + std), the unbiased std (logit standardization)."""
    return (logits - logits.mean(-1, keepdim=True)) / (1e-7 + logits.std(-1, keepdim=True))


class Method(nn.Module):
    name: ClassVar[str]
    paper: ClassVar[str] = ""  # where it is published (or "mtkd's own")
    reads: ClassVar[tuple[str, ...]] = ()  # what of the teachers it reads: logits, pooled features, maps
    trains: ClassVar[str] = ""  # the parts it trains with the student (not in the saved student)
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    needs_logits: ClassVar[bool] = False  # needs teachers adapted to the dataset's classes
    max_teachers: ClassVar[int | None] = None  # None: any number of teachers
    may_skip_parameters: ClassVar[bool] = False  # some steps leave some of its parameters out (DDP must know)
    hard_labels: ClassVar[bool] = (
        False  # reads one class per image (labels [B]); else takes soft targets [B, C] too
    )
    needs_shapes: ClassVar[bool] = False  # setup() needs the shapes of the maps it reads

    def __init__(self, options: MethodOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__()
        self.options = options
        # Each teacher's network by name (`mobilenet_v2`), set by the run before it asks which maps
        # to read: options keyed by architecture resolve against it.
        self.teacher_names: list[str] = []

    def logits_of(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits as the method softens them: z-scored with `standardize: true`."""
        return standardized(logits) if getattr(self.options, "standardize", False) else logits

    def setup(self, run: RunContext) -> None:
        """Called once before training (and before a resume loads its state): build what depends
        on the run (a memory bank per training image, modules sized by the maps' shapes)."""

    def student_maps(self) -> list[str]:
        """Module paths of the student whose outputs this method reads."""
        return []

    def teacher_maps(self) -> list[str]:
        """Module paths of the teachers whose outputs this method reads (the teacher cache stores them)."""
        return []

    def teacher_maps_of(self, k: int) -> list[str]:
        """Those of teacher k (by default the same paths for every teacher)."""
        return self.teacher_maps()

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", "mtkd.methods")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available by its `name` (mtkd's own, or a plugin's through
    the `mtkd.methods` entry point group, or any Python code before it trains)."""
    origin = "" if cls.__module__.startswith("mtkd.methods.") else f"python {cls.__module__}"
    METHODS.register(cls.name, cls, origin)
    return cls


def method_class(name: str) -> type[Method]:
    cls = METHODS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise MtkdError(f"method plugin '{name}' is not a subclass of mtkd.methods.Method")
    return cls


def method_options(name: str, options: dict[str, Any]) -> MethodOptions:
    """A method's options, validated (one-line errors naming the option)."""
    cls = method_class(name)
    try:
        return cls.Options.model_validate(options)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            allowed = ", ".join(cls.Options.model_fields)
            raise MtkdError(f"method '{name}' has no option '{key}' (allowed: {allowed})") from None
        msg = first["msg"].replace("Input should be", "must be")
        raise MtkdError(
            f"method '{name}': bad value for '{key}': {msg} (got {first.get('input')!r})"
        ) from None


def build_method(
    name: str, options: dict[str, Any], student_dim: int, teacher_dims: list[int], num_classes: int,
    teachers_have_logits: bool = True,
) -> Method:  # fmt: skip
    cls = method_class(name)
    opts = method_options(name, options)
    if cls.needs_logits and not teachers_have_logits:
        raise MtkdError(
            f"method '{name}' needs teachers adapted to the dataset's classes (mtkd teacher fit); "
            "raw ImageNet teachers only give features: use 'features'"
        )
    if cls.max_teachers is not None and len(teacher_dims) > cls.max_teachers:
        raise MtkdError(
            f"method '{name}' takes at most {cls.max_teachers} teacher(s), got {len(teacher_dims)} "
            "(use avg_kd, ebkd or camkd)"
        )
    return cls(opts, student_dim, teacher_dims, num_classes)


# ---- shared pieces ----------------------------------------------------------------------------


def kl_per_sample(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher || student) of temperature-softened distributions, per sample [B]."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = teacher_probs.clamp_min(1e-12).log()
    return (teacher_probs * (log_t - log_s)).sum(1) * temperature**2


def softened(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(logits / temperature, dim=1)


def teacher_logits(teachers: list[TeacherOutputs]) -> torch.Tensor:
    """Teachers' logits stacked as [K, B, classes]."""
    return torch.stack([t.logits for t in teachers])


def feature_distance(pred: torch.Tensor, target: torch.Tensor, distance: str) -> torch.Tensor:
    """Distance per sample [B] between projected student features and a teacher's features.

    mse: squared Euclidean distance of the L2-normalised vectors (= 2 - 2 cos);
    cosine: 1 - cos; smooth_l1: mean smooth-L1 over dimensions of the raw vectors.
    """
    if distance == "mse":
        return (F.normalize(pred, dim=1) - F.normalize(target, dim=1)).pow(2).sum(1)
    if distance == "cosine":
        return 1 - F.cosine_similarity(pred, target, dim=1)
    if distance == "smooth_l1":
        # smooth-L1 saves its target for the backward pass, which an inference tensor (a teacher run
        # under inference_mode) refuses: a copy made here, outside inference mode, is a plain tensor.
        if target.is_inference():
            target = target.clone()
        return F.smooth_l1_loss(pred, target, reduction="none").mean(1)
    raise ValueError(distance)


def projected_distances(
    features: torch.Tensor, projectors: list[nn.Module], targets: list[torch.Tensor], distance: str
) -> torch.Tensor:
    """feature_distance(P_k(features), targets[k]) for every projector, as [K, B].

    mse and cosine go through `projected_cosines` (mse = 2 - 2 cos), which never forms the
    [B, D] projections; the values and gradients are those of feature_distance up to float
    rounding (one exception: against an all-zero target the mse is 2, not 1; the gradient is
    the same, zero).
    """
    if distance == "mse":
        return 2 - 2 * projected_cosines(features, projectors, targets, eps=1e-12)
    if distance == "cosine":
        return 1 - projected_cosines(features, projectors, targets, eps=1e-8)
    return torch.stack(
        [feature_distance(p(features), t, distance) for p, t in zip(projectors, targets, strict=True)]
    )


def projector(kind: str, dim_in: int, dim_out: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(dim_in, dim_out)
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
    )

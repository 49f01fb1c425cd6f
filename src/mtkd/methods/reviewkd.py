"""`reviewkd`: knowledge review (Chen, Liu, Zhao and Jia, CVPR 2021, "Distilling Knowledge via
Knowledge Review"), as its authors publish it in dvlab-research/ReviewKD at cede6ea
(`CIFAR-100/model/reviewkd.py`, `CIFAR-100/train.py`).

The student's maps at several stages, shallow to deep (module paths), and its pooled features as
the deepest level (`pooled: true`, their f4), are fused from the deepest up by attention-based
fusion (ABF, reviewkd.py:20-56): each level's map goes through a 1x1 conv + BN to `mid_channels`;
below the deepest, the result of the level under it is resized (nearest) to this map's grid and
the two are mixed by a 2-channel sigmoid attention (a 1x1 conv with bias on their concatenation);
the mix is resized (nearest) to the teacher's grid, passed down as the next level's residual, and
goes through a 3x3 conv + BN to the teacher's channels. `mid_channels` is min(512, the deepest
level's channels) (reviewkd.py:69); the two convs start as kaiming_uniform_(a=1) (:38-39).

Each level is compared with the teacher's map at the same level by the hierarchical context loss
(`hcl`, reviewkd.py:160-177): the MSE of the maps, plus the MSE of both average-pooled to 4x4, 2x2
and 1x1 (those smaller than the map), weighted 1/2, 1/4, 1/8, over the weights' sum; summed over
levels. The term is multiplied by min(1, e / warmup_epochs), e the epoch counted from 0
(train.py:224-225), so the first epoch computes it with weight 0, as theirs does.

Defaults are the authors' for resnet32x4 -> resnet8x4 (`CIFAR-100/script/reviewKD.sh`:
`--kd-loss-weight 5.0`; `train.py:50`: `--kd-warm-up 20`). The authors read the teacher's stage
outputs before their last ReLU (`preact=True`, train.py:222): name those modules in
`teacher_layers` to do the same (for example a block's last batch norm).

One difference: their ABF resizes to a square grid when the widths differ (`x.shape[-1]`,
reviewkd.py:53-54, and `(shape, shape)` at :47); here both sides of the grid are compared and
kept, the same numbers for square maps (the tests use square ones).

Several teachers (mtkd's extension; the authors distil from one): one ABF stack per teacher, the
mean over teachers of their losses. The stacks are sized from the maps' shapes when the run starts
(`setup`), drawn from the run's seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods.base import (
    Method,
    MethodOptions,
    RunContext,
    Step,
    StudentOutputs,
    TeacherOutputs,
    register,
)

POOLED = "<pooled>"  # the level of the pooled features


class ReviewKDOptions(MethodOptions):
    weight: float = Field(
        5.0, ge=0, description="--kd-loss-weight of the authors' resnet32x4 -> resnet8x4 script"
    )
    warmup_epochs: float = Field(
        20.0, gt=0, description="--kd-warm-up: epochs over which the weight rises from 0"
    )
    student_layers: list[str] = Field(..., min_length=1, description="student module paths, shallow to deep")
    teacher_layers: list[str] | list[list[str]] | dict[str, list[str]] = Field(
        ..., description="teacher module paths at the same levels: one list for every teacher, one list per "
        "teacher, or a list per teacher network by name ({mobilenet_v2: [...], tf_efficientnet_lite0: [...]})",
    )  # fmt: skip
    pooled: bool = Field(True, description="add the pooled features as the deepest level (the authors' f4)")
    mid_channels: int | None = Field(
        None, ge=1, description="ABF width (default: min(512, deepest channels))"
    )


class ABF(nn.Module):
    """Attention-based fusion of one level: a student map (and the fused level below it) in, the
    map compared with the teacher's and the residual for the level above out."""

    def __init__(self, channels: int, mid: int, out: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, out, 3, padding=1, bias=False), nn.BatchNorm2d(out))
        self.att_conv = nn.Sequential(nn.Conv2d(mid * 2, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: torch.Tensor, below: torch.Tensor | None, out_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            assert below is not None
            below = F.interpolate(below, (h, w), mode="nearest")
            z = self.att_conv(torch.cat([x, below], 1))
            x = x * z[:, 0].view(n, 1, h, w) + below * z[:, 1].view(n, 1, h, w)
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def hcl(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """The hierarchical context loss, summed over levels."""
    total = student[0].new_zeros(())
    for fs, ft in zip(student, teacher, strict=True):
        h = fs.shape[2]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            weight /= 2.0
            loss = (
                loss + F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size)) * weight
            )
            weights += weight
        total = total + loss / weights
    return total


def as_map(x: torch.Tensor) -> torch.Tensor:
    """Pooled features [B, D] as a [B, D, 1, 1] map."""
    return x.reshape(x.shape[0], -1, 1, 1)


@register
class ReviewKD(Method):
    name = "reviewkd"
    paper = "Chen, Liu, Zhao and Jia, CVPR 2021, Distilling Knowledge via Knowledge Review"
    reads = ("intermediate maps", "pooled features")
    trains = "an attention-based fusion stack (1x1 and 3x3 convs, BN) per teacher"
    Options = ReviewKDOptions
    needs_shapes = True

    def __init__(self, options: ReviewKDOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        o, k = options, len(teacher_dims)
        layers = o.teacher_layers
        if isinstance(layers, dict):
            lists = list(layers.values())
        else:
            lists = layers if layers and isinstance(layers[0], list) else [layers] * k
            if len(lists) != k:
                raise MtkdError(
                    f"method 'reviewkd': teacher_layers lists {len(lists)} teachers, the run has {k}"
                )
        for paths in lists:
            if len(paths) != len(o.student_layers):
                raise MtkdError(
                    f"method 'reviewkd': {len(o.student_layers)} student_layers but {len(paths)} teacher_layers: "
                    "one teacher map for each student map"
                )
        self._layers = None if isinstance(layers, dict) else [list(p) for p in lists]
        self.dims = (student_dim, list(teacher_dims))
        self.stacks = nn.ModuleList()  # built by setup, once the maps' shapes are known

    @property
    def layers(self) -> list[list[str]]:
        """Each teacher's module paths (by the teacher's network name when keyed so)."""
        if self._layers is not None:
            return self._layers
        by_name = self.options.teacher_layers
        assert isinstance(by_name, dict)
        missing = [n for n in self.teacher_names if n not in by_name]
        if missing or not self.teacher_names:
            raise MtkdError(
                f"method 'reviewkd': teacher_layers names no layers for {', '.join(missing) or 'these teachers'} "
                f"(it has {', '.join(by_name)})"
            )
        return [list(by_name[n]) for n in self.teacher_names]

    def student_maps(self) -> list[str]:
        return list(self.options.student_layers)

    def teacher_maps(self) -> list[str]:
        return sorted({p for paths in self.layers for p in paths})

    def teacher_maps_of(self, k: int) -> list[str]:
        return self.layers[k]

    def setup(self, run: RunContext) -> None:
        o = self.options
        student_dim, teacher_dims = self.dims
        levels = [run.student_shapes[p] for p in o.student_layers] + (
            [(student_dim, 1, 1)] if o.pooled else []
        )
        for shape, path in zip(levels, o.student_layers, strict=False):
            if len(shape) != 3:
                raise MtkdError(
                    f"method 'reviewkd': student layer '{path}' gives {shape}, not a [C, H, W] map"
                )
        mid = o.mid_channels or min(512, levels[-1][0])
        self.out_sizes: list[list[tuple[int, int]]] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.seed * 7_919 + 29)
            for k, paths in enumerate(self.layers):
                targets = [run.teacher_shapes[k][p] for p in paths]
                targets += [(teacher_dims[k], 1, 1)] if o.pooled else []
                for shape, path in zip(targets, paths, strict=False):
                    if len(shape) != 3:
                        raise MtkdError(
                            f"method 'reviewkd': teacher layer '{path}' gives {shape}, not a [C, H, W] map"
                        )
                last = len(levels) - 1
                stack = nn.ModuleList(
                    ABF(s[0], mid, t[0], fuse=i < last)
                    for i, (s, t) in enumerate(zip(levels, targets, strict=True))
                )
                self.stacks.append(stack)
                self.out_sizes.append([(t[1], t[2]) for t in targets])

    def fused(self, k: int, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's levels (shallow to deep) through teacher k's ABF stack, shallow to deep."""
        stack, sizes = self.stacks[k], self.out_sizes[k]
        results, below = [], None
        for i in range(len(maps) - 1, -1, -1):
            out, below = stack[i](maps[i], below, sizes[i])
            results.insert(0, out)
        return results

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        maps = [student.maps[p] for p in o.student_layers] + ([as_map(student.features)] if o.pooled else [])
        losses = []
        for k, teacher in enumerate(teachers):
            targets = [teacher.maps[p] for p in self.layers[k]]
            targets += [as_map(teacher.features)] if o.pooled else []
            losses.append(hcl(self.fused(k, maps), targets))
        ramp = min(1.0, (step.epoch - 1) / o.warmup_epochs)
        return {"reviewkd": torch.stack(losses).mean() * ramp * o.weight}

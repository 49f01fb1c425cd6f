"""Training augmentation on whole uint8 batches: a timm / torchvision pipeline drawn per image.

A pipeline (`Augment`) is: a crop (random crop after zero padding, or random-resized-crop), a
horizontal flip, RandAugment or TrivialAugment-Wide, colour jitter, random erasing; and, per batch,
mixup or cutmix. `draw` makes every random choice for n images from one CPU generator (so results
do not depend on the device); `Drawn.apply` applies them to a batch of any resolution: geometry is
recorded at the size it was drawn for and scaled to the batch's, so a teacher shown the original
files at its own input size sees the same view as the student's small copy.

The auto-augment operations and their magnitude tables are torchvision's (`transforms.v2.RandAugment`,
`TrivialAugmentWide`), applied through torchvision's functional ops to the rows that drew the same
operation and magnitude; the crop follows `RandomResizedCrop.get_params`, the erasing
`RandomErasing.get_params`, mixup / cutmix timm's `Mixup` (one lambda per batch, the batch paired with
itself reversed). Erased boxes are filled with the dataset's mean colour (what torchvision's value 0
after normalisation means); mixed images are rounded back to uint8.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from mtkd.data.batches import CropFlip, apply_crop_flip, draw_crop_flip

BINS = 31  # torchvision's num_magnitude_bins

# (name, signed, magnitudes(bins) for RandAugment, for TrivialAugment-Wide); None: no magnitude.
# Translations are in pixels of an image `width` wide (filled in by `_magnitude`).
_OPS: list[tuple[str, bool, Any, Any]] = [
    ("Identity", False, None, None),
    ("ShearX", True, (0.0, 0.3), (0.0, 0.99)),
    ("ShearY", True, (0.0, 0.3), (0.0, 0.99)),
    ("TranslateX", True, "ra-translate", (0.0, 32.0)),
    ("TranslateY", True, "ra-translate", (0.0, 32.0)),
    ("Rotate", True, (0.0, 30.0), (0.0, 135.0)),
    ("Brightness", True, (0.0, 0.9), (0.0, 0.99)),
    ("Color", True, (0.0, 0.9), (0.0, 0.99)),
    ("Contrast", True, (0.0, 0.9), (0.0, 0.99)),
    ("Sharpness", True, (0.0, 0.9), (0.0, 0.99)),
    ("Posterize", False, "posterize-4", "posterize-6"),
    ("Solarize", False, (1.0, 0.0), (1.0, 0.0)),
    ("AutoContrast", False, None, None),
    ("Equalize", False, None, None),
]
OP_NAMES = [op[0] for op in _OPS]


@functools.lru_cache(maxsize=4096)
def _magnitude(op: int, wide: bool, level: int, side: int) -> float | None:
    """torchvision's magnitude of operation `op` at bin `level` for an image `side` pixels along the
    operation's axis (translations only), before the sign."""
    _, _, ra, ta = _OPS[op]
    table = ta if wide else ra
    if table is None:
        return None
    if table == "ra-translate":
        return float(torch.linspace(0.0, 150.0 / 331.0 * side, BINS)[level])
    if isinstance(table, str):  # posterize: 8 bits down to 4 (RandAugment) or 2 (TrivialAugment)
        span = int(table.split("-")[1])
        return float((8 - (torch.arange(BINS) / ((BINS - 1) / span))).round().int()[level])
    return float(torch.linspace(table[0], table[1], BINS)[level])


def apply_op(images: torch.Tensor, op: int, magnitude: float, fill: list[float]) -> torch.Tensor:
    """One auto-augment operation on uint8 images [B, C, H, W] (torchvision's semantics)."""
    name, near = OP_NAMES[op], InterpolationMode.NEAREST
    if name == "Identity":
        return images
    if name in ("ShearX", "ShearY"):
        s = math.degrees(math.atan(magnitude))
        shear = [s, 0.0] if name == "ShearX" else [0.0, s]
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=near,
                         fill=fill, center=[0, 0])  # fmt: skip
    if name in ("TranslateX", "TranslateY"):
        t = [int(magnitude), 0] if name == "TranslateX" else [0, int(magnitude)]
        return TF.affine(
            images, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0], interpolation=near, fill=fill
        )
    if name == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=near, fill=fill)
    if name == "Brightness":
        return TF.adjust_brightness(images, 1.0 + magnitude)
    if name == "Color":
        return TF.adjust_saturation(images, 1.0 + magnitude)
    if name == "Contrast":
        return TF.adjust_contrast(images, 1.0 + magnitude)
    if name == "Sharpness":
        return TF.adjust_sharpness(images, 1.0 + magnitude)
    if name == "Posterize":
        return TF.posterize(images, int(magnitude))
    if name == "Solarize":
        return TF.solarize(images, 255.0 * magnitude)
    if name == "AutoContrast":
        return TF.autocontrast(images)
    return TF.equalize(images)


@dataclass(frozen=True)
class Augment:
    """A training augmentation pipeline (see the module docstring). The default is none at all."""

    padding: int = 0  # crop "pad": random crop after this many zeros on each side
    hflip: bool = False
    crop: str = "pad"  # "pad" or "resized"
    scale: tuple[float, float] = (0.08, 1.0)  # resized: area fraction range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # resized: aspect ratio range
    auto: str = "none"  # "none", "randaugment", "trivialaugment"
    ops: int = 2  # randaugment: operations per image
    magnitude: int = 9  # randaugment: magnitude bin (0..30)
    jitter: float = 0.0  # brightness, contrast, saturation factors drawn from [1 - j, 1 + j]
    erasing: float = 0.0  # probability of erasing one box per image
    fill: tuple[int, ...] = (0,)  # erased boxes and auto-augment borders: the dataset's mean colour
    mixup: float = 0.0  # Beta(alpha, alpha) of mixup; 0: off
    cutmix: float = 0.0  # Beta(alpha, alpha) of cutmix; 0: off

    @property
    def beyond_crop_flip(self) -> bool:
        return self.crop != "pad" or self.auto != "none" or self.jitter > 0 or self.erasing > 0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def key(self) -> dict:
        """What decides the per-image views (part of a teacher cache's key). Crop and flip alone keep
        the keys of earlier versions."""
        out: dict[str, Any] = {"padding": self.padding if self.crop == "pad" else 0, "hflip": self.hflip}
        if self.beyond_crop_flip:
            out["augment"] = {
                "crop": self.crop, "scale": list(self.scale), "ratio": list(self.ratio), "auto": self.auto,
                "ops": self.ops, "magnitude": self.magnitude, "jitter": self.jitter, "erasing": self.erasing,
                "fill": list(self.fill),
            }  # fmt: skip
        return out

    def draw(self, n: int, size: tuple[int, int], gen: torch.Generator) -> Drawn | None:
        """Every random choice for n images of `size` (H, W), and the batch's mix; None when the
        pipeline does nothing. Crop and flip are drawn first, as by earlier versions."""
        pad = self.padding if self.crop == "pad" else 0
        if not (pad or self.hflip or self.beyond_crop_flip or self.mixes):
            return None
        crop = draw_crop_flip(n, pad, self.hflip, gen)
        d = Drawn(self, size, crop)
        if self.crop == "resized":
            d.box = _resized_boxes(n, size, self.scale, self.ratio, gen)
        if self.auto != "none":
            k = self.ops if self.auto == "randaugment" else 1
            d.ops = torch.randint(0, len(_OPS), (n, k), generator=gen)
            d.levels = (
                torch.full((n, k), self.magnitude)
                if self.auto == "randaugment"
                else torch.randint(0, BINS, (n, k), generator=gen)
            )
            d.negative = torch.rand(n, k, generator=gen) <= 0.5
        if self.jitter > 0:
            d.jitter = 1 - self.jitter + 2 * self.jitter * torch.rand(n, 3, generator=gen)
        if self.erasing > 0:
            d.erase = _erase_boxes(n, size, self.erasing, gen)
        if self.mixes:
            d.mix = _draw_mix(self, gen)
        return d


@dataclass
class Mix:
    """One batch's mixup or cutmix: lambda, and cutmix's box as fractions (top, bottom, left, right)."""

    kind: str
    lam: float
    box: tuple[float, float, float, float] | None = None

    def apply(self, x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed uint8 images and soft targets [B, classes]: each image with the batch reversed."""
        other = x.flip(0)
        lam = self.lam
        if self.kind == "mixup":
            mixed = (x.float() * lam + other.float() * (1 - lam)).round_().to(x.dtype)
        else:
            h, w = x.shape[-2:]
            t, b, l, r = self.box  # noqa: E741
            y0, y1, x0, x1 = round(t * h), round(b * h), round(l * w), round(r * w)
            mixed = x.clone()
            mixed[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        one = F.one_hot(y, classes).float()
        return mixed, one * lam + one.flip(0) * (1 - lam)


@dataclass
class Drawn:
    """The random choices of `augment` for n images drawn at `size` (rows selectable with [index])."""

    augment: Augment
    size: tuple[int, int]
    crop: CropFlip
    box: torch.Tensor | None = None  # [n, 4] top, left, height, width in pixels at `size`
    ops: torch.Tensor | None = None  # [n, k] operation indices
    levels: torch.Tensor | None = None  # [n, k] magnitude bins
    negative: torch.Tensor | None = None  # [n, k] signed magnitudes flipped
    jitter: torch.Tensor | None = None  # [n, 3] brightness, contrast, saturation factors
    erase: torch.Tensor | None = None  # [n, 4] top, left, height, width at `size` (height 0: none)
    mix: Mix | None = field(default=None)

    def __getitem__(self, index: Any) -> Drawn:
        pick = lambda t: None if t is None else t[index]  # noqa: E731
        return replace(
            self, crop=self.crop[index], box=pick(self.box), ops=pick(self.ops), levels=pick(self.levels),
            negative=pick(self.negative), jitter=pick(self.jitter), erase=pick(self.erase),
        )  # fmt: skip

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The drawn views of uint8 images x [B, C, H, W] (mix aside: see Mix.apply), in x's memory
        format (a channels_last batch stays channels_last for the convolutions)."""
        out = self._views(x)
        if x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _views(self, x: torch.Tensor) -> torch.Tensor:
        a, (h, w) = self.augment, x.shape[-2:]
        fy, fx = h / self.size[0], w / self.size[1]
        if self.box is not None:
            x = _resized_crop(x, self.box, self.size)
            if self.crop.flip is not None:
                x = torch.where(
                    self.crop.flip.to(x.device, non_blocking=True)[:, None, None, None], x.flip(-1), x
                )
        else:
            x = apply_crop_flip(x, self.crop.scaled(fy, fx))
        fill = [float(v) for v in a.fill]
        if len(fill) != x.shape[1]:
            fill = fill[:1] * x.shape[1]
        if self.ops is not None:
            x = self._auto(x, (h, w), fill)
        if self.jitter is not None:
            x = _jitter(x, self.jitter.to(x.device, non_blocking=True))
        if self.erase is not None:
            x = _erase(x, self.erase, self.size, fill)
        return x

    def _auto(self, x: torch.Tensor, hw: tuple[int, int], fill: list[float]) -> torch.Tensor:
        """The operations, layer by layer, each on the rows that drew it with the same magnitude."""
        wide = self.augment.auto == "trivialaugment"
        x = x.clone()
        for k in range(self.ops.shape[1]):
            keys = self.ops[:, k] * (2 * BINS) + self.levels[:, k] * 2 + self.negative[:, k].long()
            for key in torch.unique(keys).tolist():
                op, level, neg = key // (2 * BINS), (key % (2 * BINS)) // 2, key % 2
                axis = 0 if OP_NAMES[op] == "TranslateY" else 1
                m = _magnitude(op, wide, level, self.size[axis])
                if m is None:
                    if OP_NAMES[op] == "Identity":
                        continue
                    m = 0.0
                elif OP_NAMES[op].startswith("Translate"):
                    m *= hw[axis] / self.size[axis]  # the same shift relative to the image
                if neg and _OPS[op][1]:
                    m = -m
                rows = (keys == key).nonzero().flatten().to(x.device, non_blocking=True)
                x[rows] = apply_op(x[rows], op, m, fill)
        return x


def _resized_boxes(
    n: int,
    size: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    gen: torch.Generator,
) -> torch.Tensor:
    """torchvision's RandomResizedCrop.get_params for n images at once: ten tries each, else the
    central crop of the nearest allowed aspect ratio."""
    h, w = size
    area = h * w
    log_r = torch.log(torch.tensor(ratio, dtype=torch.float64))
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, 10, generator=gen, dtype=torch.float64))
    aspect = torch.exp(
        log_r[0] + (log_r[1] - log_r[0]) * torch.rand(n, 10, generator=gen, dtype=torch.float64)
    )
    cw = torch.sqrt(target * aspect).round().long()
    ch = torch.sqrt(target / aspect).round().long()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    u = torch.rand(n, 10, 2, generator=gen, dtype=torch.float64)
    found = ok.any(1)
    j = ok.long().argmax(1)[:, None]  # each image's first try that fits
    bh, bw = ch.gather(1, j)[:, 0], cw.gather(1, j)[:, 0]
    top = (u[:, :, 0].gather(1, j)[:, 0] * (h - bh + 1)).long()
    left = (u[:, :, 1].gather(1, j)[:, 0] * (w - bw + 1)).long()
    in_ratio = w / h
    if in_ratio < ratio[0]:
        fw, fh = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        fh, fw = h, int(round(h * ratio[1]))
    else:
        fw, fh = w, h
    central = torch.tensor([(h - fh) // 2, (w - fw) // 2, fh, fw])
    return torch.where(found[:, None], torch.stack([top, left, bh, bw], 1), central)


def _resized_crop(x: torch.Tensor, box: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (pixels at `size`, scaled to x's size) resized to the whole image, bilinear,
    in one grid_sample for the batch."""
    b = box.to(torch.float64)
    top, left = b[:, 0] / size[0], b[:, 1] / size[1]
    hh, ww = b[:, 2] / size[0], b[:, 3] / size[1]
    theta = torch.zeros(len(b), 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = ww, 2 * left + ww - 1
    theta[:, 1, 1], theta[:, 1, 2] = hh, 2 * top + hh - 1
    theta = theta.float().to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(x.dtype)


def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast, then saturation, each image by its own factors (torchvision's formulas
    for uint8: blend, clamp, truncate)."""

    def blend(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return (a.float() * r + b * (1 - r)).clamp_(0, 255).to(torch.uint8)

    def gray(t: torch.Tensor) -> torch.Tensor:
        if t.shape[1] == 1:
            return t.float()
        r, g, b = t.float().unbind(1)
        return (r * 0.2989 + g * 0.587 + b * 0.114).unsqueeze(1).floor_()

    f = factors.float()[:, :, None, None, None]
    x = (x.float() * f[:, 0]).clamp_(0, 255).to(torch.uint8)
    x = blend(x, gray(x).mean(dim=(1, 2, 3), keepdim=True), f[:, 1])
    if x.shape[1] == 3:
        x = blend(x, gray(x), f[:, 2])
    return x


def _erase_boxes(n: int, size: tuple[int, int], p: float, gen: torch.Generator) -> torch.Tensor:
    """torchvision's RandomErasing.get_params (scale 0.02-1/3, ratio 0.3-3.3, ten tries) for n
    images, each erased with probability p; boxes [n, 4] top, left, height, width (height 0: none)."""
    h, w = size
    area = h * w
    on = torch.rand(n, generator=gen) < p
    target = area * (0.02 + (1 / 3 - 0.02) * torch.rand(n, 10, generator=gen, dtype=torch.float64))
    lo, hi = math.log(0.3), math.log(3.3)
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, 10, generator=gen, dtype=torch.float64))
    eh = torch.sqrt(target * aspect).round().long()
    ew = torch.sqrt(target / aspect).round().long()
    ok = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    u = torch.rand(n, 10, 2, generator=gen, dtype=torch.float64)
    j = ok.long().argmax(1)[:, None]  # each image's first try that fits
    bh, bw = eh.gather(1, j)[:, 0], ew.gather(1, j)[:, 0]
    top = (u[:, :, 0].gather(1, j)[:, 0] * (h - bh + 1)).long()
    left = (u[:, :, 1].gather(1, j)[:, 0] * (w - bw + 1)).long()
    boxes = torch.stack([top, left, bh, bw], 1)
    return torch.where((on & ok.any(1))[:, None], boxes, torch.zeros_like(boxes))


def _erase(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], fill: list[float]) -> torch.Tensor:
    """Boxes (pixels at `size`, scaled to x's size) set to the fill colour, as one masked write."""
    h, w = x.shape[-2:]
    b = boxes.to(torch.float64)
    fy, fx = h / size[0], w / size[1]
    top, left = (b[:, 0] * fy).round().long(), (b[:, 1] * fx).round().long()
    bottom, right = top + (b[:, 2] * fy).round().long(), left + (b[:, 3] * fx).round().long()
    rows, cols = torch.arange(h), torch.arange(w)
    inside = (
        ((rows[None, :] >= top[:, None]) & (rows[None, :] < bottom[:, None]))[:, :, None]
        & ((cols[None, :] >= left[:, None]) & (cols[None, :] < right[:, None]))[:, None, :]
    )[:, None].to(x.device, non_blocking=True)
    colour = (
        torch.tensor(fill, dtype=torch.float32)
        .round()
        .to(x.dtype)
        .to(x.device, non_blocking=True)[None, :, None, None]
    )
    return torch.where(inside, colour, x)


def _draw_mix(a: Augment, gen: torch.Generator) -> Mix:
    """timm's Mixup choice for one batch: cutmix or mixup (even odds when both are on), lambda from
    Beta(alpha, alpha), cutmix's box centred uniformly with sides sqrt(1 - lambda), clipped."""
    use_cutmix = a.cutmix > 0 and (a.mixup == 0 or bool(torch.rand(1, generator=gen) < 0.5))
    alpha = a.cutmix if use_cutmix else a.mixup
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    if not use_cutmix:
        return Mix("mixup", lam)
    cut = math.sqrt(1 - lam)
    cy, cx = torch.rand(2, generator=gen, dtype=torch.float64).tolist()
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    return Mix(
        "cutmix", lam, (clip(cy - cut / 2), clip(cy + cut / 2), clip(cx - cut / 2), clip(cx + cut / 2))
    )

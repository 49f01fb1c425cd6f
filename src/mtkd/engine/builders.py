"""Batch transforms and models rebuilt from checkpoint metadata."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from mtkd.data.batches import CropFlip, Normalize, apply_crop_flip, draw_crop_flip
from mtkd.engine.checkpoint import load_weights, read_meta
from mtkd.engine.trainer import Transform
from mtkd.errors import MtkdError
from mtkd.models.teachers import TeacherNet, TeacherSpec
from mtkd.models.zoo import create_student


class ImageTransform:
    """uint8 batches -> model inputs; random crop and flip when given drawn parameters (training).

    With `normalize` the output is normalised with the dataset's statistics (students); without,
    it is in [0, 1] (teachers, which normalise for themselves).
    """

    def __init__(self, normalize: nn.Module | None, padding: int = 0, hflip: bool = False):
        self.normalize, self.padding, self.hflip = normalize, padding, hflip

    def draw(self, n: int, gen: torch.Generator) -> CropFlip | None:
        return draw_crop_flip(n, self.padding, self.hflip, gen) if self.padding or self.hflip else None

    def __call__(self, x: torch.Tensor, drawn: Any = None) -> torch.Tensor:
        if drawn is not None:
            x = apply_crop_flip(x, drawn)
        return self.normalize(x) if self.normalize is not None else x.float() / 255.0


def build_model(meta: dict) -> nn.Module:
    """The architecture a checkpoint describes, with random weights."""
    spec, data = meta["model"], meta["data"]
    if meta["kind"] == "student":
        return create_student(spec["name"], len(data["classes"]), data["channels"])
    if meta["kind"] == "teacher":
        known = {f.name for f in fields(TeacherSpec)}
        return TeacherNet(
            TeacherSpec(**{k: v for k, v in spec.items() if k in known} | {"pretrained": "none"})
        )
    raise MtkdError(f"unknown checkpoint kind '{meta['kind']}'")


def load_model(path: str, device: torch.device) -> tuple[nn.Module, dict, Transform]:
    """(model with its trained weights in eval mode, checkpoint metadata, evaluation transform)."""
    meta = read_meta(path)
    model = build_model(meta)
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

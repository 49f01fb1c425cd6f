"""Intermediate feature maps by module path, read through forward hooks.

`FeatureHooks(model, ["layers.2", "body.features.13"])` records those modules' outputs on
every forward pass, with no change to the model's code (as torchdistill does).
"""

from __future__ import annotations

import torch
from torch import nn

from mtkd.errors import MtkdError


class FeatureHooks:
    def __init__(self, model: nn.Module, paths: list[str]):
        modules = dict(model.named_modules())
        unknown = [p for p in paths if p not in modules]
        if unknown:
            examples = ", ".join(n for n in list(modules)[1:6])
            raise MtkdError(
                f"no module '{unknown[0]}' in {type(model).__name__} (module paths look like: {examples}, ...)"
            )
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[p].register_forward_hook(self._recorder(p)) for p in paths]

    def _recorder(self, path: str):  # noqa: ANN202
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            self.outputs[path] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> FeatureHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def student_outputs(
    model: nn.Module, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(last feature map, pooled penultimate features, logits) of a model that follows timm's
    forward_features / forward_head."""
    fmap = model.forward_features(images)
    pooled = model.forward_head(fmap, pre_logits=True)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    logits = head(pooled) if head is not None else model.forward_head(fmap)
    return fmap, pooled, logits

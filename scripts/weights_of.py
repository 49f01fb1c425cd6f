"""The weights a few small runs end with, as SHA-256 prefixes: run it at two commits and compare,
to show that a change of code (a move, a refactoring) leaves every result as it was.

    PYTHONPATH=/path/to/other/checkout/src python scripts/weights_of.py /tmp/before > before.json
    python scripts/weights_of.py /tmp/after > after.json && diff before.json after.json

The runs cover cached and online teachers, a teacher's intermediate maps (camkd, hint), an ImageNet
teacher by name, and a module given from Python, on scikit-learn's digits (a few minutes here).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

import mtkd


class Tiny(nn.Module):
    """A teacher module of the user's own: fixed random weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.environ["MTKD_HOME"] = str(out / "home")  # empty: every cache is built, none reused
    print(f"mtkd from {mtkd.__file__}", file=sys.stderr)
    common = dict(data="digits", epochs=2, progress=False)
    fitted = mtkd.fit_teacher("mobilenet_v2", data="digits", input_size=32, epochs=2, out=str(out / "t"),
                              progress=False)  # fmt: skip
    hint = {"name": "hint", "student_layer": "features.4", "teacher_layer": "body.features.6",
            "student_channels": 32, "teacher_channels": [32], "adapter": "conv1x1", "weight": 0.1}  # fmt: skip
    runs = {
        "cached_camkd_kd": dict(teachers=[fitted], methods=["camkd", "kd", hint],
                                transfer={"teacher_mode": "cached", "views": 2}),
        "online_mix": dict(teachers=[fitted, Tiny()], methods=[{"name": "camkd", "feature": "pooled"}, "avg_kd",
                           "features"], transfer={"teacher_mode": "online"}),
        "online_maps": dict(teachers=[fitted], methods=["camkd", hint], transfer={"teacher_mode": "online"}),
        "cached_imagenet": dict(teachers=[{"name": "mobilenet_v2", "input_size": 32}], methods=["features"],
                                transfer={"teacher_mode": "cached", "views": 3}),
        "cached_module_dkd": dict(teachers=[fitted, Tiny()], methods=["dkd", "ebkd"],
                                  transfer={"teacher_mode": "cached", "views": 2}),
    }  # fmt: skip
    hashes = {}
    for name, kw in runs.items():
        mtkd.train("cnn_small", out=str(out / name), **common, **kw)
        files = sorted((out / name).glob("*.safetensors"))
        hashes[name] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files}
    print(json.dumps(hashes, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))

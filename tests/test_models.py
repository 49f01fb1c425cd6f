import math

import pytest
import torch
from torch import nn

from mtkd.engine.trainer import warmup_cosine
from mtkd.errors import MtkdError
from mtkd.models.cost import count_macs, count_params
from mtkd.models.hooks import FeatureHooks, student_outputs
from mtkd.models.students import STUDENTS
from mtkd.models.zoo import create_student, resolve


@pytest.mark.parametrize("name", [n for n in STUDENTS.names() if not STUDENTS.origin(n)])  # mtkd's own
def test_students_give_logits_and_pooled_features(name):
    model = create_student(name, 7, 1).eval()
    x = torch.randn(3, 1, 28, 28)
    _, pooled, logits = student_outputs(model, x)
    assert logits.shape == (3, 7) and pooled.shape == (3, model.num_features)
    assert torch.allclose(logits, model(x), atol=1e-6)


def test_student_sizes_cover_the_range():
    sizes = {n: count_params(create_student(n, 10, 1)) for n in ("cnn_small", "cnn_medium", "cnn_large")}
    assert 20_000 < sizes["cnn_small"] < 30_000
    assert 80_000 < sizes["cnn_medium"] < 120_000
    assert 400_000 < sizes["cnn_large"] < 600_000


def test_timm_student_and_unknown_name():
    model = create_student("timm:resnet10t", 5, 1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    with pytest.raises(MtkdError, match="did you mean"):
        resolve("resnet2O")


def test_hooks_read_module_outputs_by_path():
    model = create_student("resnet8", 10, 3).eval()
    with FeatureHooks(model, ["layers.1", "stem"]) as hooks:
        model(torch.randn(2, 3, 32, 32))
    assert hooks.outputs["layers.1"].shape == (2, 32, 16, 16)
    assert hooks.outputs["stem"].shape == (2, 16, 32, 32)
    with pytest.raises(MtkdError, match="no module 'layers.9'"):
        FeatureHooks(model, ["layers.9"])


def test_a_module_path_that_does_not_exist_names_the_nearest_ones():
    from mtkd.teachers import TeacherNet, TeacherSpec

    model = create_student("resnet8", 10, 3)
    with pytest.raises(MtkdError) as err:
        FeatureHooks(model, ["layer.1"])
    assert str(err.value) == (
        "no module 'layer.1' in CifarResNet (nearest: layers.1, layers.2, layers.0, layers, layers.2.bn1)"
    )
    with pytest.raises(MtkdError, match=r"^no module 'zzz' in CifarResNet \(nearest: stem, layers, fc\)$"):
        FeatureHooks(model, ["zzz"])  # nothing close: the top-level children
    teacher = TeacherNet(TeacherSpec("mobilenet_v2", pretrained="none", head="gap", num_classes=10))
    with pytest.raises(MtkdError, match=r"\(nearest: body\.features\.6, "):
        FeatureHooks(teacher, ["features.6"])  # a teacher's backbone is under body.


def test_macs_counted_by_hand():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    # conv: 2 output channels x 16 positions x 9 taps; linear: 32 x 3
    assert count_macs(model, (1, 4, 4)) == 2 * 16 * 9 + 32 * 3


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10, 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 100, 10, 0.1) == pytest.approx(0.1)

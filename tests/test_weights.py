"""The offline ImageNet teachers load strictly and recognise real photos."""

import pytest
import torch

from mtkd.models.pretrained import OFFLINE_WEIGHTS, read_state_dict, rename_in_order
from mtkd.teachers.nets import TeacherNet, TeacherSpec

skimage_data = pytest.importorskip("skimage.data")

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _photo(img) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    s = min(h, w)
    return x[..., (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]


@pytest.mark.parametrize("name", ["mobilenet_v2", "tf_efficientnet_lite0"])
def test_offline_teacher_classifies_cat_and_espresso(name):
    if OFFLINE_WEIGHTS[name].path() is None:
        pytest.skip(f"{OFFLINE_WEIGHTS[name].pip_name} not installed")
    teacher = TeacherNet(TeacherSpec(name, pretrained="offline", head="imagenet")).eval()
    with torch.no_grad():
        cat = teacher(_photo(skimage_data.chelsea())).argmax(1).item()
        cup = teacher(_photo(skimage_data.coffee())).argmax(1).item()
    assert cat in CAT_CLASSES
    assert cup == ESPRESSO


def test_lite0_keys_map_in_order_with_matching_shapes():
    entry = OFFLINE_WEIGHTS["tf_efficientnet_lite0"]
    if entry.path() is None:
        pytest.skip("efficientnet-lite0 weights not installed")
    import timm

    model = timm.create_model("tf_efficientnet_lite0")
    source = read_state_dict(entry.path())
    mapped = rename_in_order(source, model, "lite0")
    assert list(mapped) == list(model.state_dict())
    assert torch.equal(mapped["conv_stem.weight"], source["_conv_stem.weight"])
    model.load_state_dict(mapped, strict=True)

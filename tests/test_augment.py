"""train.augment: each step against torchvision's own transforms (an independent implementation
of the same operations), the geometry kept when a view is applied at another resolution, mixup /
cutmix targets by hand, and runs that use them (and refuse what cannot work)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from conftest import run_cli
from mtkd.data.augment import BINS, OP_NAMES, Augment, Mix, _magnitude, apply_op


def _images(n=6, c=3, h=20, w=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_every_auto_augment_operation_equals_torchvisions(policy, channels):
    """Every operation at bins 0, 9 and 30, both signs, on a batch at once, equals torchvision's
    RandAugment / TrivialAugmentWide applying that operation to each image alone."""
    x = _images(c=channels)
    fill = [17.0] * channels
    ref = (v2.RandAugment if policy == "randaugment" else v2.TrivialAugmentWide)(fill=fill)
    space = ref._AUGMENTATION_SPACE
    assert OP_NAMES == list(space)
    wide = policy == "trivialaugment"
    for op, name in enumerate(OP_NAMES):
        fn, signed = space[name]
        for level in (0, 9, 30):
            table = fn(BINS, 20, 24)
            mine = _magnitude(op, wide, level, 20 if name == "TranslateY" else 24)
            if table is None:
                assert mine is None
                continue
            assert mine == pytest.approx(float(table[level]))
            for sign in (1, -1) if signed else (1,):
                got = apply_op(x, op, sign * mine, fill)
                want = torch.stack([
                    ref._apply_image_or_video_transform(img, name, sign * float(table[level]), ref.interpolation,
                                                        ref._fill)
                    for img in x
                ])  # fmt: skip
                assert torch.equal(got, want), (name, level, sign)


def test_colour_jitter_on_a_batch_equals_torchvision_image_by_image():
    x = _images(n=8)
    a = Augment(jitter=0.4)
    d = a.draw(8, (20, 24), torch.Generator().manual_seed(1))
    got = d.apply(x)
    for i in range(8):
        b, c, s = d.jitter[i].tolist()
        want = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), c), s)
        # the same formulas; (1 - r) rounded once in float32 here, so a value may land one level lower
        assert (got[i].int() - want.int()).abs().max() <= 1
        assert (got[i] != want).float().mean() < 0.01
    assert ((d.jitter >= 0.6) & (d.jitter <= 1.4)).all() and d.jitter.std() > 0.1


def test_random_resized_crop_boxes_and_pixels_follow_torchvision():
    a = Augment(crop="resized", scale=(0.25, 0.6), ratio=(0.5, 2.0))
    n, size = 400, (40, 48)
    d = a.draw(n, size, torch.Generator().manual_seed(2))
    top, left, h, w = d.box.T
    area = (h * w).double() / (40 * 48)
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 48).all()
    # torchvision rounds the sides after drawing area and ratio, so the area can slip past the range
    assert area.min() > 0.22 and area.max() < 0.63 and area.std() > 0.05
    r = w.double() / h
    assert r.min() > 0.45 and r.max() < 2.2
    # pixels: the box resized to the whole image, as torchvision's resized_crop (bilinear, no
    # antialiasing: the crop is always enlarged); inner pixels only (outside the box, torchvision
    # clamps to the crop, grid_sample to the image)
    x = _images(n=4, h=40, w=48)
    sub = d[torch.arange(4)]
    got = sub.apply(x)
    for i in range(4):
        t, l, hh, ww = sub.box[i].tolist()  # noqa: E741
        want = TF.resized_crop(x[i], t, l, hh, ww, [40, 48], v2.InterpolationMode.BILINEAR, antialias=False)
        diff = (got[i].int() - want.int()).abs()[:, 2:-2, 2:-2]
        assert diff.max() <= 1, i


def test_random_erasing_boxes_and_fill():
    a = Augment(erasing=0.5, fill=(10, 20, 30))
    d = a.draw(500, (32, 32), torch.Generator().manual_seed(3))
    on = d.erase[:, 2] > 0
    assert 0.4 < on.float().mean() < 0.6
    area = (d.erase[on, 2] * d.erase[on, 3]).double() / 1024
    assert area.min() >= 0.015 and area.max() <= 0.36
    x = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    first = torch.nonzero(on)[:4].flatten()
    out = d[first].apply(x)
    for i, row in enumerate(first.tolist()):
        t, l, h, w = d.erase[row].tolist()  # noqa: E741
        assert out[i, :, t : t + h, l : l + w].flatten(1).unique(dim=1).tolist() == [[10], [20], [30]]
        assert (out[i] != 200).all(0).sum() == h * w


def test_a_view_applied_at_a_larger_size_is_the_same_view():
    """A teacher reading files at 2x sees the student's view scaled: boxes and shifts doubled."""
    a = Augment(crop="resized", hflip=True, erasing=1.0, fill=(0,))
    d = a.draw(3, (16, 16), torch.Generator().manual_seed(4))
    small = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(3, 1, 16, 16)
    small = (small % 251).to(torch.uint8).contiguous()
    big = F.interpolate(small.float(), scale_factor=2, mode="nearest").to(torch.uint8)
    at_small, at_big = d.apply(small), d.apply(big)
    erased_small = (at_small == 0).sum((1, 2, 3))
    erased_big = (at_big == 0).sum((1, 2, 3))
    assert torch.equal(erased_big, 4 * erased_small)
    # the big view, shrunk by 2 (box average), is within interpolation error of the small view
    shrunk = F.avg_pool2d(at_big.float(), 2)
    assert (shrunk - at_small.float()).abs().mean() < 12
    # a translation: TranslateX at bin 30 moves 150/331 of the width at either size
    t = Augment(auto="randaugment", ops=1, magnitude=30)
    dt = t.draw(1, (16, 16), torch.Generator())
    dt.ops[:] = OP_NAMES.index("TranslateX")
    dt.negative[:] = False
    col = torch.zeros(1, 1, 16, 16, dtype=torch.uint8)
    col[..., 0] = 255
    moved_small = dt.apply(col)[0, 0, 0].nonzero().item()
    moved_big = dt.apply(F.interpolate(col.float(), scale_factor=2).to(torch.uint8))[0, 0, 0].nonzero()
    assert moved_small == int(150 / 331 * 16) and moved_big.min().item() == int(150 / 331 * 32)


def test_mixup_and_cutmix_targets_by_hand():
    x = torch.stack([torch.full((1, 10, 10), 100 * i, dtype=torch.uint8) for i in range(3)])
    y = torch.tensor([0, 1, 2])
    images, target = Mix("mixup", 0.7).apply(x, y, 3)
    assert images[:, 0, 0, 0].tolist() == [round(0.3 * 200), 100, round(0.7 * 200)]
    assert torch.allclose(target, torch.tensor([[0.7, 0, 0.3], [0, 1.0, 0], [0.3, 0, 0.7]]))
    images, target = Mix("cutmix", 0.5, (0.0, 0.4, 0.5, 1.0)).apply(x, y, 3)  # rows 0-3, columns 5-9
    assert (
        (images[0, 0, :4, 5:] == 200).all()
        and (images[0, 0, 4:] == 0).all()
        and (images[0, 0, :, :5] == 0).all()
    )
    lam = 1 - 20 / 100  # the box's area decides lambda (timm's correct_lam)
    assert torch.allclose(target[0], torch.tensor([lam, 0, 1 - lam]))
    # drawing: lambda ~ Beta(a, a), both kinds when both are on
    a = Augment(mixup=0.4, cutmix=1.0)
    draws = [a.draw(2, (10, 10), torch.Generator().manual_seed(s)).mix for s in range(400)]
    kinds = [m.kind for m in draws]
    assert 150 < kinds.count("cutmix") < 250
    lams = torch.tensor([m.lam for m in draws if m.kind == "cutmix"])
    assert abs(lams.mean().item() - 0.5) < 0.05 and abs(lams.var().item() - 1 / 12) < 0.02  # Beta(1, 1)
    for m in draws:
        if m.kind == "cutmix":
            t, b, l, r = m.box  # noqa: E741
            assert 0 <= t <= b <= 1 and 0 <= l <= r <= 1 and b - t <= math.sqrt(1 - m.lam) + 1e-9


def test_the_default_pipeline_draws_what_earlier_versions_drew():
    """Crop and flip alone take the same numbers from the generator as before train.augment, so
    earlier runs keep their results; and they add nothing to a teacher cache's key."""
    from mtkd.data.batches import draw_crop_flip

    a = Augment(padding=2, hflip=True)
    d = a.draw(64, (28, 28), torch.Generator().manual_seed(7))
    old = draw_crop_flip(64, 2, True, torch.Generator().manual_seed(7))
    assert torch.equal(d.crop.dy, old.dy) and torch.equal(d.crop.flip, old.flip)
    assert a.key() == {"padding": 2, "hflip": True}
    assert "augment" in Augment(padding=2, auto="trivialaugment").key()
    assert Augment().draw(4, (8, 8), torch.Generator()) is None


def test_students_train_with_the_pipeline_and_results_repeat(tmp_path, capsys):
    """From the CLI, a student alone with random-resized-crop, TrivialAugment, jitter, erasing and
    mixup/cutmix; twice, with the same weights; and still learning."""
    import json

    from safetensors.torch import load_file

    sets = ["train.augment.crop=resized", "train.augment.scale=[0.5,1.0]", "train.augment.auto=trivialaugment",
            "train.augment.jitter=0.3", "train.augment.erasing=0.25", "train.augment.mixup=0.2",
            "train.augment.cutmix=1.0", "output.progress=false"]  # fmt: skip
    flags = [a for s in sets for a in ("--set", s)]
    for name in "ab":
        code, _, err = run_cli(["train", "--dataset", "digits", "--epochs", "3", "--out", tmp_path / name, *flags],
                               capsys)  # fmt: skip
        assert code == 0, err
    wa, wb = load_file(tmp_path / "a" / "best.safetensors"), load_file(tmp_path / "b" / "best.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    result = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert result["test_acc"] > 0.5, result  # heavy augmentation on 8x8 digits, 3 epochs: still learning
    code, _, err = run_cli(["train", "--dataset", "digits", "--out", tmp_path / "bad", "--set",
                            "train.augment.scale=[0.9,0.2]"], capsys)  # fmt: skip
    assert code == 2 and "train.augment.scale" in err and len(err.strip().splitlines()) == 1


TEACHER = [{"name": "mobilenet_v2", "input_size": 32}]


def test_cached_views_are_draws_of_the_pipeline_and_online_teachers_mix(tmp_path):
    import mtkd
    from mtkd.errors import MtkdError
    from mtkd.models.pretrained import OFFLINE_WEIGHTS

    if OFFLINE_WEIGHTS["mobilenet_v2"].path() is None:
        pytest.skip("offline MobileNetV2 needed")
    aug = {"auto": "randaugment", "erasing": 0.5}
    run = mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "c", progress=False, teachers=TEACHER,
                     methods=["features"], views=2, config={"train": {"augment": aug}})  # fmt: skip
    caches = list((mtkd.io.cache_dir() / "teachers").glob("*/meta.json"))
    assert run.test_acc > 0.2 and caches
    mixed = {"cutmix": 1.0, "mixup": 0.2}
    run = mtkd.train("cnn_small", data="digits", epochs=4, out=tmp_path / "o", progress=False, teachers=TEACHER,
                     methods=["features"], teacher_mode="online", config={"train": {"augment": mixed}})  # fmt: skip
    assert run.test_acc > 0.3
    with pytest.raises(MtkdError, match="teacher_mode: online"):
        mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "r", progress=False, teachers=TEACHER,
                   methods=["features"], config={"train": {"augment": mixed}})  # fmt: skip
    with pytest.raises(MtkdError, match="method 'dkd' needs one class per image"):
        mtkd.train("cnn_small", data="digits", epochs=1, out=tmp_path / "d", progress=False, teachers=TEACHER,
                   methods=["dkd"], teacher_mode="online", config={"train": {"augment": mixed}})  # fmt: skip


def test_the_step_loss_of_a_mixed_batch_is_the_cross_entropy_on_soft_targets():
    from mtkd.data.batches import Normalize
    from mtkd.engine.builders import ImageTransform
    from mtkd.engine.trainer import CrossEntropy
    from mtkd.methods.base import Step

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 24, 4))
    norm = Normalize([0.5] * 3, [0.25] * 3)
    loss = CrossEntropy(ImageTransform(norm, Augment(cutmix=1.0), (20, 24)), 0.1, classes=4)
    x, y = _images(n=6), torch.tensor([0, 1, 2, 3, 0, 1])
    drawn = loss.draw(6, torch.Generator().manual_seed(5))
    logits, terms = loss(net, torch.arange(6), x, y, drawn, Step())
    mixed, soft = drawn.mix.apply(x, y, 4)
    soft = soft * 0.9 + 0.1 / 4  # label smoothing on soft targets
    want = -(soft * torch.log_softmax(net(norm(mixed)), 1)).sum(1).mean()
    assert torch.allclose(terms["ce"], want) and not torch.equal(mixed, x)


@pytest.mark.parametrize(
    "augment",
    [Augment(padding=2, hflip=True), Augment(crop="resized", auto="randaugment", jitter=0.4, erasing=0.5)],
)
def test_a_channels_last_batch_stays_channels_last(augment):
    """CUDA runs put batches in channels_last for the convolutions; the crop (an indexing) used to
    give back a plain NCHW tensor. The values are the same either way."""
    x = _images(n=4)
    drawn = augment.draw(4, (20, 24), torch.Generator().manual_seed(0))
    last = drawn.apply(x.contiguous(memory_format=torch.channels_last))
    assert last.is_contiguous(memory_format=torch.channels_last) and not last.is_contiguous()
    assert torch.equal(last, drawn.apply(x))

"""`reviewkd` equals its authors' code: values and gradients in float64 on random maps, with 1, 2
and 3 teachers, to 1e-6 relative.

The reference below is written here from reading dvlab-research/ReviewKD at
cede6ea6387ae9b6127de0e561507177bf19c11e (never copied), in their order of operations:
- `CIFAR-100/model/reviewkd.py:20-56` (ABF), `:58-86` (ReviewKD: reversed levels, abfs[::-1],
  results inserted at the front), `:69` (mid_channel), `:160-177` (hcl)
- `CIFAR-100/train.py:220-225` (the loss: hcl * min(1, epoch / kd_warm_up) * kd_loss_weight, epoch
  counted from 0)
With several teachers, mtkd's reading: one ABF stack per teacher, the mean of their losses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods import StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import RunContext, Step

# ---- reference -------------------------------------------------------------------------------


class RefABF(nn.Module):
    """reviewkd.py:20-56 (weights loaded from mtkd's module afterwards)."""

    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))  # fmt: skip
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))  # fmt: skip
        self.att_conv = (
            nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        )

    def forward(self, x, y=None, shape=None, out_shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = torch.cat([x, y], dim=1)
            z = self.att_conv(z)
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        y = self.conv2(x)
        return y, x


class RefReviewKD(nn.Module):
    """reviewkd.py:58-86 without the student: its features are given (shallow to deep)."""

    def __init__(self, in_channels, out_channels, shapes, out_shapes):
        super().__init__()
        self.shapes = shapes
        self.out_shapes = shapes if out_shapes is None else out_shapes
        abfs = nn.ModuleList()
        mid_channel = min(512, in_channels[-1])
        for idx, in_channel in enumerate(in_channels):
            abfs.append(RefABF(in_channel, mid_channel, out_channels[idx], idx < len(in_channels) - 1))
        self.abfs = abfs[::-1]

    def forward(self, student_features):
        x = student_features[::-1]
        results = []
        out_features, res_features = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results.append(out_features)
        for features, abf, shape, out_shape in zip(
            x[1:],
            self.abfs[1:],
            self.shapes[1:],
            self.out_shapes[1:],
            strict=False,  # theirs truncates
        ):
            out_features, res_features = abf(features, res_features, shape, out_shape)
            results.insert(0, out_features)
        return results


def ref_hcl(fstudent, fteacher):
    """reviewkd.py:160-177."""
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher, strict=False):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt, tot = 1.0, 1.0
        for l in [4, 2, 1]:  # noqa: E741 - their name
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


# ---- comparisons -----------------------------------------------------------------------------

B = 6
STUDENT = {"s.a": (8, 8, 8), "s.b": (16, 4, 4), "s.c": (24, 2, 2)}  # shallow to deep, then pooled (32)
TEACHERS = [  # each teacher's maps at the same levels (other grids and channels), then pooled
    {"t.a": (12, 16, 16), "t.b": (20, 8, 8), "t.c": (28, 4, 4)},
    {"t.a": (10, 8, 8), "t.b": (14, 4, 4), "t.c": (18, 2, 2)},
    {"t.a": (6, 4, 4), "t.b": (6, 4, 4), "t.c": (6, 1, 1)},
]
POOLED_S, POOLED_T = 32, [40, 24, 16]


def _method(k, **options):
    opts = {"student_layers": list(STUDENT), "teacher_layers": ["t.a", "t.b", "t.c"], **options}
    m = build_method("reviewkd", opts, POOLED_S, POOLED_T[:k], 10)
    m.setup(RunContext(torch.zeros(10, dtype=torch.long), 3, STUDENT, TEACHERS[:k]))
    return m.double()


def _reference(ours, k):
    ref = RefReviewKD(
        [8, 16, 24, POOLED_S],
        [shape[0] for shape in TEACHERS[k].values()] + [POOLED_T[k]],
        [1, 2, 4, 8],  # deep to shallow, as theirs are written
        [1] + [shape[1] for shape in reversed(TEACHERS[k].values())],
    ).double()
    # their abfs, reversed, are shallow to deep like ours
    for mine, theirs in zip(ours.stacks[k], list(ref.abfs)[::-1], strict=True):
        theirs.load_state_dict(mine.state_dict())
    return ref


@pytest.mark.parametrize("epoch", [1, 11, 30])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_reviewkd_equals_its_authors(k, epoch):
    ours = _method(k)
    refs = [_reference(ours, j) for j in range(k)]
    g = torch.Generator().manual_seed(k * 100 + epoch)
    s_maps = {
        p: torch.randn(B, *shape, generator=g, dtype=torch.float64).requires_grad_()
        for p, shape in STUDENT.items()
    }
    s_pooled = torch.randn(B, POOLED_S, generator=g, dtype=torch.float64).requires_grad_()
    teachers = [
        TeacherOutputs(torch.randn(B, POOLED_T[j], generator=g, dtype=torch.float64),
                       maps={p: torch.randn(B, *shape, generator=g, dtype=torch.float64) for p, shape in TEACHERS[j].items()})
        for j in range(k)
    ]  # fmt: skip
    step = Step(epoch=epoch, steps_per_epoch=10, epochs=40)
    loss = ours(StudentOutputs(torch.zeros(B, 10), s_pooled, maps=s_maps), teachers, None, step)["reviewkd"]
    features = [*s_maps.values(), s_pooled.view(B, POOLED_S, 1, 1)]
    per_teacher = []
    for j, ref in enumerate(refs):
        targets = [*teachers[j].maps.values(), teachers[j].features.view(B, -1, 1, 1)]
        per_teacher.append(ref_hcl(ref(features), targets) * min(1, (epoch - 1) / 20.0) * 5.0)
    expected = torch.stack(per_teacher).mean()
    params = [*s_maps.values(), s_pooled]
    ours_params = [p for stack in ours.stacks for p in stack.parameters()]
    ref_params = [p for ref in refs for abf in list(ref.abfs)[::-1] for p in abf.parameters()]
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6, abs=0 if epoch > 1 else 1e-12)
    if epoch == 1:  # weight 0: the term is there, its gradients are zero (their first epoch)
        assert loss.item() == 0 and all(g.abs().max() == 0 for g in torch.autograd.grad(loss, params))
        return
    grads = torch.autograd.grad(loss, params + ours_params)
    ref_grads = torch.autograd.grad(expected, params + ref_params)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_reviewkd_without_pooled_level_and_its_width():
    ours = _method(1, pooled=False, mid_channels=5)
    assert [abf.conv1[0].out_channels for abf in ours.stacks[0]] == [5, 5, 5]
    assert [abf.att_conv is not None for abf in ours.stacks[0]] == [True, True, False]
    default = _method(2)
    assert default.stacks[0][0].conv1[0].out_channels == 32  # min(512, the pooled level's 32)
    assert default.teacher_maps_of(1) == ["t.a", "t.b", "t.c"]


def test_reviewkd_stacks_are_drawn_from_the_run_seed_alone():
    a, b = _method(2), _method(2)
    torch.manual_seed(12345)  # the global RNG does not matter
    c = _method(2)
    for x, y in ((a, b), (a, c)):
        assert all(torch.equal(p, q) for p, q in zip(x.parameters(), y.parameters(), strict=True))


@pytest.mark.parametrize(
    ("options", "message"),
    [({"teacher_layers": ["t.a", "t.b"]}, "3 student_layers but 2 teacher_layers"),
     ({"teacher_layers": [["t.a", "t.b", "t.c"]] * 3}, "teacher_layers lists 3 teachers, the run has 2")],
)  # fmt: skip
def test_reviewkd_refuses_levels_that_do_not_pair(options, message):
    opts = {"student_layers": list(STUDENT), "teacher_layers": ["t.a", "t.b", "t.c"], **options}
    with pytest.raises(MtkdError, match=message):
        build_method("reviewkd", opts, POOLED_S, POOLED_T[:2], 10)


def test_reviewkd_teacher_layers_by_network_name():
    """A study's teams mix networks: `teacher_layers` keyed by network name serves every team."""
    by_name = {"mnv2": ["t.a", "t.b", "t.c"], "lite": ["u.a", "u.b", "u.c"]}
    opts = {"student_layers": list(STUDENT), "teacher_layers": by_name}
    m = build_method("reviewkd", opts, POOLED_S, POOLED_T[:2], 10)
    m.teacher_names = ["lite", "mnv2"]
    assert m.teacher_maps_of(0) == ["u.a", "u.b", "u.c"] and m.teacher_maps_of(1) == ["t.a", "t.b", "t.c"]
    alone = build_method("reviewkd", opts, POOLED_S, POOLED_T[:1], 10)
    alone.teacher_names = ["mnv2"]
    assert alone.layers == [["t.a", "t.b", "t.c"]]
    other = build_method("reviewkd", opts, POOLED_S, POOLED_T[:1], 10)
    other.teacher_names = ["resnet18"]
    with pytest.raises(
        MtkdError, match="teacher_layers names no layers for resnet18 \\(it has mnv2, lite\\)"
    ):
        other.teacher_maps()
    with pytest.raises(MtkdError, match="3 student_layers but 2 teacher_layers"):
        build_method(
            "reviewkd", {**opts, "teacher_layers": {"mnv2": ["t.a", "t.b"]}}, POOLED_S, POOLED_T[:1], 10
        )

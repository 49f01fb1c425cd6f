"""Methods named after a paper equal their authors' published code: values and gradients, float64,
random inputs, 1, 2 and 3 teachers, to 1e-6 relative.

Each reference below is written here from reading the authors' code (never copied), in their
order of operations, and cites what it re-expresses:
- CA-MKD: Rorozhl/CA-MKD at acc8c2b14d805f76143cf56b7c5af88b28d1dde8
- FitNets: HobbitLong/RepDistiller at 1e2f81692647991a80a1e97ffa14e2af915eaa6f
- DKD: megvii-research/mdistiller at e8c5bb331e78c9d79a8894ca233caae78531cf7f
- DIST: hunto/image_classification_sota at 6f7a70a1dd57fd88413d83909d3d53243068f701 (the
  classification code hunto/DIST_KD at 2418f18 points to)
- logit standardization: sunshangquan/logit-standardization-KD at f6e5aa5172bad618e801163c3385322eea673754
With one teacher, CA-MKD's `train_student.py` (parse_option) switches every ensemble method to
AVERAGE_LOSS, so the reference for K = 1 is their averaged KD.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtkd.errors import MtkdError
from mtkd.methods import StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import FINAL_MAP, Step

B, C, T = 16, 10, 4.0
LATE = Step(epoch=30, steps_per_epoch=10, epochs=40)


# ---- references ------------------------------------------------------------------------------


def ref_distill_kl(y_s, y_t, temperature, per_sample):
    """CA-MKD distiller_zoo/KD.py:13-20 (DistillKL.forward): KLDivLoss of log_softmax(s/T) and
    softmax(t/T) times T^2, summed over classes per sample (is_ca) or a batch mean."""
    log_p_s = torch.log_softmax(y_s / temperature, dim=1)
    p_t = torch.softmax(y_t / temperature, dim=1)
    pointwise = p_t * (torch.log(p_t) - log_p_s) * temperature**2
    return pointwise.sum(-1) if per_sample else pointwise.sum() / y_s.shape[0]


def ref_average(y_s, teachers, temperature):
    """CA-MKD helper/loops.py:200-203 (AVERAGE_LOSS): mean over teachers of the batch-mean KD."""
    return torch.stack([ref_distill_kl(y_s, t, temperature, False) for t in teachers]).mean(0)


def ref_ebkd(y_s, teachers, temperature):
    """CA-MKD helper/loops.py:204-219 (EBKD)."""
    if len(teachers) == 1:
        return ref_average(y_s, teachers, temperature)
    div = torch.stack([ref_distill_kl(y_s, t, temperature, True) for t in teachers])
    entropy = [(-(F.softmax(t, dim=1)) * torch.log(F.softmax(t, dim=1))).sum(1) for t in teachers]
    total = torch.stack(entropy, dim=0).sum(dim=0)
    weight = torch.stack([1.0 - e / total for e in entropy])
    return (weight * div).sum() / (div.shape[1] * len(teachers))


def ref_camkd_logits(y_s, teachers, target, temperature):
    """CA-MKD helper/loops.py:220-229 (CAMKD)."""
    if len(teachers) == 1:
        return ref_average(y_s, teachers, temperature)
    ce = torch.stack([F.cross_entropy(t, target, reduction="none") for t in teachers], dim=0)
    attention = (1.0 - F.softmax(ce, dim=0)) / (len(teachers) - 1)
    div = torch.stack([ref_distill_kl(y_s, t, temperature, True) for t in teachers], dim=0)
    return (attention * div).sum() / (div.shape[1] * len(teachers))


class RefEmbed(nn.Module):
    """CA-MKD models/util.py Embed with convs off: 1x1 conv (bias), BatchNorm2d, ReLU."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.transfer = nn.Sequential(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU())

    def forward(self, x):
        return self.transfer(x)


def ref_camkd_features(feat_s, teacher_maps, heads, embeds, target):
    """CA-MKD models/util.py:65-81 (CalWeight.forward) then distiller_zoo/CAMKD.py:18-32."""
    trans, outputs = [], []
    s_h = feat_s.shape[2]
    for i, t_map in enumerate(teacher_maps):
        t_h = t_map.shape[2]
        if s_h >= t_h:
            pooled = F.adaptive_avg_pool2d(feat_s, (t_h, t_h))
        else:
            pooled = F.interpolate(feat_s, size=(t_h, t_h), mode="bilinear")
        e = embeds[i](pooled)
        trans.append(e)
        outputs.append(heads[i](e))
    bsz, k = target.shape[0], len(trans)
    loss_t = torch.stack([F.cross_entropy(o, target, reduction="none") for o in outputs], dim=0)
    weight = (1.0 - F.softmax(loss_t, dim=0)) / (k - 1) if k > 1 else torch.ones_like(loss_t)
    loss_st = torch.stack(
        [
            F.mse_loss(s, t, reduction="none").reshape(bsz, -1).mean(-1)
            for s, t in zip(trans, teacher_maps, strict=True)
        ],
        dim=0,
    )
    return (weight * loss_st).sum() / (bsz * k)


class RefConvReg(nn.Module):
    """CA-MKD models/util.py:10-37 (ConvReg, use_relu): the regressor of FitNets."""

    def __init__(self, s_shape, t_shape):
        super().__init__()
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        self.s_h, self.t_h = s_h, t_h
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1, stride=1)
        self.bn = nn.BatchNorm2d(t_c)
        self.relu = nn.ReLU()

    def forward(self, x):
        if self.s_h * 4 == self.t_h:
            x = F.interpolate(x, size=(self.t_h, self.t_h), mode="bilinear")
        return self.relu(self.bn(self.conv(x)))


def ref_hint(f_s, f_t):
    """RepDistiller distiller_zoo/FitNet.py:6-14 (HintLoss): nn.MSELoss() with its mean."""
    return nn.MSELoss()(f_s, f_t)


def ref_dkd(logits_student, logits_teacher, target, alpha, beta, temperature):
    """mdistiller mdistiller/distillers/DKD.py:8-32 (dkd_loss, with _get_gt_mask, _get_other_mask
    and cat_mask at :35-51), in its order of operations."""
    gt = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def binary(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], dim=1)

    pred_s = binary(F.softmax(logits_student / temperature, dim=1))
    pred_t = binary(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_s), pred_t, reduction="sum") * temperature**2 / target.shape[0]
    pred_t2 = F.softmax(logits_teacher / temperature - 1000.0 * gt, dim=1)
    log_pred_s2 = F.log_softmax(logits_student / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_pred_s2, pred_t2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def ref_dist(z_s, z_t, beta, gamma, tau):
    """image_classification_sota lib/models/losses/dist_kd.py:4-34 (cosine_similarity,
    pearson_correlation, inter_class_relation, intra_class_relation, DIST.forward), re-expressed."""

    def cos(a, b, eps=1e-8):
        return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)

    def pearson(a, b):
        return cos(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1))

    def inter(a, b):
        return 1 - pearson(a, b).mean()

    y_s, y_t = (z_s / tau).softmax(dim=1), (z_t / tau).softmax(dim=1)
    return beta * tau**2 * inter(y_s, y_t) + gamma * tau**2 * inter(y_s.transpose(0, 1), y_t.transpose(0, 1))


def ref_ls_normalize(logit):
    """logit-standardization-KD mdistiller/distillers/KD.py:7-10 (normalize)."""
    return (logit - logit.mean(dim=-1, keepdims=True)) / (1e-7 + logit.std(dim=-1, keepdims=True))


def ref_ls_kd(s, t, temperature):
    """logit-standardization-KD mdistiller/distillers/KD.py:12-19 (kd_loss with logit_stand)."""
    s, t = ref_ls_normalize(s), ref_ls_normalize(t)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    p_t = F.softmax(t / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="none").sum(1).mean() * temperature**2


# ---- comparisons -----------------------------------------------------------------------------


def _inputs(k, seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, C, generator=g, dtype=torch.float64).mul(2).requires_grad_()
    ts = [torch.randn(B, C, generator=g, dtype=torch.float64) * 3 for _ in range(k)]
    y = torch.randint(0, C, (B,), generator=g)
    return s, ts, y


def _same(ours, ref, params):
    """Values and gradients (with respect to `params`) equal to 1e-6 relative."""
    g_ours = torch.autograd.grad(ours, params, retain_graph=True)
    g_ref = torch.autograd.grad(ref, params, retain_graph=True)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(
    ("name", "reference"),
    [("avg_kd", lambda s, ts, y: ref_average(s, ts, T)), ("ebkd", lambda s, ts, y: ref_ebkd(s, ts, T)),
     ("camkd", lambda s, ts, y: ref_camkd_logits(s, ts, y, T))],
)  # fmt: skip
def test_logit_methods_equal_ca_mkd(name, reference, k):
    s, ts, y = _inputs(k, seed=k)
    options = {"temperature": T, "feature_weight": 0.0} if name == "camkd" else {"temperature": T}
    method = build_method(name, options, 64, [1280, 1280, 1408][:k], C).double()
    student = StudentOutputs(s, torch.zeros(B, 64, dtype=torch.float64))
    teachers = [TeacherOutputs(torch.zeros(B, 8, dtype=torch.float64), t) for t in ts]
    ours = method(student, teachers, y, LATE)[name]
    _same(ours, reference(s, ts, y), [s])


def test_kd_equals_repdistiller_and_ca_mkd():
    s, (t,), y = _inputs(1, seed=7)
    kd = build_method("kd", {"temperature": T}, 4, [4], C)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = kd(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t)], y, LATE)["kd"]
    _same(ours, ref_distill_kl(s, t, T, False), [s])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_camkd_feature_term_equals_ca_mkd(k):
    g = torch.Generator().manual_seed(10 + k)
    channels = [32, 32, 48][:k]
    fmap = torch.randn(B, 24, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    maps = [torch.randn(B, c, 2, 2, generator=g, dtype=torch.float64).relu() for c in channels]
    heads = [
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, C)).double() for c in channels
    ]
    for h in heads:
        h.requires_grad_(False)
    s, ts, y = _inputs(k, seed=20 + k)
    cam = build_method("camkd", {"temperature": T}, 24, channels, C).double()
    embeds = [RefEmbed(24, c).double() for c in channels]
    for ours_e, ref_e in zip(cam.embeddings, embeds, strict=True):
        ref_e.transfer.load_state_dict(ours_e.state_dict())
    student = StudentOutputs(s, torch.zeros(B, 24, dtype=torch.float64), fmap=fmap)
    teachers = [
        TeacherOutputs(torch.zeros(B, c, dtype=torch.float64), t, {FINAL_MAP: m}, h)
        for c, t, m, h in zip(channels, ts, maps, heads, strict=True)
    ]
    terms = cam(student, teachers, y, LATE)
    params = [fmap, *cam.parameters()]
    ref = 50.0 * ref_camkd_features(fmap, maps, heads, embeds, y)
    ref_params = [fmap, *(p for e in embeds for p in e.parameters())]
    assert terms["camkd_features"].item() == pytest.approx(ref.item(), rel=1e-6)
    ours_grads = torch.autograd.grad(terms["camkd_features"], params)
    ref_grads = torch.autograd.grad(ref, ref_params)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)
    # The published schedule: no feature term in the first epoch.
    assert "camkd_features" not in cam(student, teachers, y, Step(epoch=1))


@pytest.mark.parametrize(("s_size", "t_size"), [(8, 4), (4, 8), (6, 4), (2, 8), (4, 4)])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_hint_equals_fitnets(s_size, t_size, k):
    g = torch.Generator().manual_seed(s_size * 10 + t_size + k)
    channels = [16, 24, 16][:k]
    s_map = torch.randn(B, 8, s_size, s_size, generator=g, dtype=torch.float64).requires_grad_()
    t_maps = [torch.randn(B, c, t_size, t_size, generator=g, dtype=torch.float64) for c in channels]
    opts = {"student_layer": "s", "teacher_layer": "t", "student_channels": 8, "teacher_channels": channels,
            "student_size": s_size, "teacher_size": t_size}  # fmt: skip
    hint = build_method("hint", opts, 8, channels, C, teachers_have_logits=False).double()
    regs = [RefConvReg(s_map.shape, t.shape).double() for t in t_maps]
    for ours_r, ref_r in zip(hint.adapters, regs, strict=True):
        ref_r.load_state_dict(ours_r.state_dict())
    student = StudentOutputs(torch.zeros(B, C, dtype=torch.float64), torch.zeros(B, 8), {"s": s_map})
    teachers = [
        TeacherOutputs(torch.zeros(B, c), maps={"t": t}) for c, t in zip(channels, t_maps, strict=True)
    ]
    ours = hint(student, teachers, torch.zeros(B, dtype=torch.long), LATE)["hint"]
    ref = 100.0 * torch.stack([ref_hint(r(s_map), t) for r, t in zip(regs, t_maps, strict=True)]).mean()
    ours_grads = torch.autograd.grad(ours, [s_map, *hint.parameters()])
    ref_grads = torch.autograd.grad(ref, [s_map, *(p for r in regs for p in r.parameters())])
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(ours_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-12)


def test_hint_refuses_grids_fitnets_cannot_map():
    opts = {"student_layer": "s", "teacher_layer": "t", "student_channels": 8, "teacher_channels": [8],
            "student_size": 4, "teacher_size": 6}  # fmt: skip
    with pytest.raises(MtkdError, match="a 4x4 student map cannot be regressed onto a 6x6 teacher map"):
        build_method("hint", opts, 8, [8], C, teachers_have_logits=False)


@pytest.mark.parametrize("epoch", [1, 5, 20, 31])
def test_dkd_equals_mdistiller(epoch):
    s, (t,), y = _inputs(1, seed=epoch)
    dkd = build_method("dkd", {}, 4, [4], C)  # mdistiller's defaults: alpha 1, beta 8, T 4, warm-up 20
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = dkd(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t)], y, Step(epoch=epoch))[
        "dkd"
    ]
    ref = min(epoch / 20.0, 1.0) * ref_dkd(s, t, y, 1.0, 8.0, 4.0)  # DKD.py:65-72, kwargs["epoch"] from 1
    _same(ours, ref, [s])


def test_dkd_with_several_teachers_distils_their_averaged_targets():
    s, ts, y = _inputs(3, seed=3)
    dkd = build_method("dkd", {"warmup": 0}, 4, [4, 4, 4], C)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = dkd(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t) for t in ts], y, LATE)[
        "dkd"
    ]
    # the averaged softened outputs, as logits at temperature T: T log(mean_k softmax(t_k / T))
    mean_p = torch.stack([torch.softmax(t / T, 1) for t in ts]).mean(0)
    _same(ours, ref_dkd(s, T * torch.log(mean_p), y, 1.0, 8.0, T), [s])


@pytest.mark.parametrize("k", [1, 2, 3])
def test_dist_equals_its_authors(k):
    """DIST at the authors' CIFAR defaults (tau 4, beta = gamma = 1, kd_loss_weight 2); several
    teachers: the mean of the per-teacher losses (mtkd's extension)."""
    s, ts, y = _inputs(k, seed=40 + k)
    dist = build_method("dist", {}, 4, [4] * k, C)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    teachers = [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t) for t in ts]
    ours = dist(student, teachers, y, LATE)["dist"]
    _same(ours, 2.0 * torch.stack([ref_dist(s, t, 1.0, 1.0, 4.0) for t in ts]).mean(), [s])


def test_dist_with_a_batch_of_one_has_the_authors_intra_term():
    """A batch of one has no spread across the batch: their eps makes rho 0 there, so the
    intra-class term is tau^2, whatever the logits (the test shows it; mtkd does the same)."""
    s, (t,), y = _inputs(1, seed=5)
    dist = build_method("dist", {"beta": 0.0}, 4, [4], C)
    one = dist(
        StudentOutputs(s[:1], torch.zeros(1, 4)), [TeacherOutputs(torch.zeros(1, 4), t[:1])], y[:1], LATE
    )
    assert (
        one["dist"].item() == pytest.approx(2.0 * 16.0) == 2.0 * ref_dist(s[:1], t[:1], 0.0, 1.0, 4.0).item()
    )


def test_standardized_kd_equals_logit_standardization():
    """`standardize: true` on kd: their KD with --logit-stand --base-temp 2 --kd-weight 9."""
    s, (t,), y = _inputs(1, seed=50)
    kd = build_method("kd", {"standardize": True}, 4, [4], C)
    assert (kd.options.temperature, kd.options.weight) == (2.0, 9.0)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = kd(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t)], y, LATE)["kd"]
    _same(ours, 9.0 * ref_ls_kd(s, t, 2.0), [s])
    asked = build_method("kd", {"standardize": True, "temperature": 3.0, "weight": 1.0}, 4, [4], C)
    assert (asked.options.temperature, asked.options.weight) == (3.0, 1.0)  # what is given stays


def test_standardized_dkd_equals_logit_standardization():
    """Their DKD with --logit-stand (DKD.py:12-14 z-scores both, tools/train.py:115-118 multiplies
    alpha and beta by 9 and sets T to 2): mtkd's weight 9 and T 2."""
    s, (t,), y = _inputs(1, seed=51)
    dkd = build_method("dkd", {"standardize": True}, 4, [4], C)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = dkd(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t)], y, LATE)["dkd"]
    ref = ref_dkd(ref_ls_normalize(s), ref_ls_normalize(t), y, 9.0, 72.0, 2.0)
    _same(ours, ref, [s])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("name", ["avg_kd", "dist"])
def test_standardized_multi_teacher_methods_standardize_every_logit(name, k):
    """With several teachers, each teacher's logits and the student's are z-scored before the
    method's own loss (for dist, its own tau 4 and weight 2 stay)."""
    s, ts, y = _inputs(k, seed=60 + k)
    method = build_method(name, {"standardize": True}, 4, [4] * k, C)
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = method(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t) for t in ts], y, LATE)[
        name
    ]
    z_s, z_ts = ref_ls_normalize(s), [ref_ls_normalize(t) for t in ts]
    if name == "avg_kd":
        ref = 9.0 * ref_average(z_s, z_ts, 2.0)
    else:
        ref = 2.0 * torch.stack([ref_dist(z_s, t, 1.0, 1.0, 4.0) for t in z_ts]).mean()
    _same(ours, ref, [s])


@pytest.mark.parametrize("name", ["ebkd", "camkd"])
def test_standardized_weighted_methods_keep_their_weights_from_raw_logits(name):
    """ebkd's entropies and camkd's confidences (the teacher weights) read the raw logits; only
    the distilled distributions are standardized (mtkd's reading: the authors publish neither)."""
    s, ts, y = _inputs(3, seed=70)
    options = {"standardize": True} | ({"feature_weight": 0.0} if name == "camkd" else {})
    method = build_method(name, options, 4, [4] * 3, C).double()
    student = StudentOutputs(s, torch.zeros(B, 4, dtype=torch.float64))
    ours = method(student, [TeacherOutputs(torch.zeros(B, 4, dtype=torch.float64), t) for t in ts], y, LATE)[
        name
    ]
    z_s = ref_ls_normalize(s)
    div = torch.stack([ref_distill_kl(z_s, ref_ls_normalize(t), 2.0, True) for t in ts])
    if name == "ebkd":
        entropy = [(-(F.softmax(t, dim=1)) * torch.log(F.softmax(t, dim=1))).sum(1) for t in ts]
        total = torch.stack(entropy).sum(0)
        weight = torch.stack([1.0 - e / total for e in entropy])
    else:
        ce = torch.stack([F.cross_entropy(t, y, reduction="none") for t in ts])
        weight = (1.0 - F.softmax(ce, dim=0)) / 2
    _same(ours, 9.0 * (weight * div).sum() / (B * 3), [s])

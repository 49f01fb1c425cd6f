"""Every transfer loss against numbers computed by hand, and KD against torchdistill."""

import math

import pytest
import torch

from mtkd.errors import MtkdError
from mtkd.methods import StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import Step, feature_distance, kl_per_sample, projected_distances, projector
from mtkd.methods.camkd import confidence_weights
from mtkd.methods.ebkd import entropy_weights

LN3 = math.log(3)
S = Step(epoch=2)


def _teacher(logits, features=(1.0, 0.0)):
    return TeacherOutputs(features=torch.tensor([features]), logits=torch.tensor([logits]))


def _student(logits=(0.0, 0.0), features=(1.0, 0.0)):
    return StudentOutputs(logits=torch.tensor([logits]), features=torch.tensor([features]))


def test_kl_by_hand():
    # teacher p = (3/4, 1/4), student uniform: KL = 3/4 ln(3/2) + 1/4 ln(1/2)
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    got = kl_per_sample(torch.zeros(1, 2), torch.tensor([[0.75, 0.25]]), 1.0)
    assert got.item() == pytest.approx(expected, abs=1e-6)


def test_kd_by_hand_with_temperature():
    kd = build_method("kd", {"temperature": 2.0, "weight": 0.5}, 2, [2], 2)
    # softmax((ln3, 0) / 2) = (sqrt3, 1) / (sqrt3 + 1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    terms = kd(_student(), [_teacher((LN3, 0.0))], torch.tensor([0]), S)
    assert terms["kd"].item() == pytest.approx(0.5 * 4 * kl, abs=1e-6)


def test_kd_matches_torchdistill():
    td = pytest.importorskip("torchdistill.losses.mid_level")
    torch.manual_seed(0)
    s, t, y = torch.randn(16, 10), torch.randn(16, 10), torch.randint(0, 10, (16,))
    ref = td.KDLoss("s", "o", "t", "o", temperature=4.0, alpha=0.5)({"s": {"o": s}}, {"t": {"o": t}}, y)
    kd = build_method("kd", {"temperature": 4.0, "weight": 0.5}, 4, [4], 10)
    ours = (
        0.5 * torch.nn.functional.cross_entropy(s, y)
        + kd(StudentOutputs(s, torch.zeros(16, 4)), [TeacherOutputs(torch.zeros(16, 4), t)], y, S)["kd"]
    )
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_avg_kd_averages_the_losses_or_the_probabilities():
    teachers = [_teacher((LN3, 0.0)), _teacher((0.0, LN3))]  # (3/4, 1/4) and (1/4, 3/4)
    losses = build_method("avg_kd", {"temperature": 1.0}, 2, [2, 2], 2)
    probs = build_method("avg_kd", {"temperature": 1.0, "average": "probabilities"}, 2, [2, 2], 2)
    y = torch.tensor([0])
    # student uniform: both KLs are 3/4 ln(3/2) + 1/4 ln(1/2); the mean of the teachers is uniform: 0
    kl_a = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert losses(_student(), teachers, y, S)["avg_kd"].item() == pytest.approx(kl_a, abs=1e-6)
    assert probs(_student(), teachers, y, S)["avg_kd"].item() == pytest.approx(0.0, abs=1e-6)
    # student (3/4, 1/4): KL 0 to A, 1/4 ln(1/3) + 3/4 ln 3 = ln 3 / 2 to B; mean ln 3 / 4
    assert losses(_student((LN3, 0.0)), teachers, y, S)["avg_kd"].item() == pytest.approx(LN3 / 4, abs=1e-6)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(2.0)  # KL(uniform || (3/4, 1/4))
    assert probs(_student((LN3, 0.0)), teachers, y, S)["avg_kd"].item() == pytest.approx(expected, abs=1e-6)
    # The two readings differ by a constant: the same gradient for the student.
    grads = []
    for method in (losses, probs):
        s = torch.tensor([[0.3, -0.2]], requires_grad=True)
        method(StudentOutputs(s, torch.zeros(1, 2)), teachers, y, S)["avg_kd"].backward()
        grads.append(s.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_entropy_weights_by_hand():
    logits = torch.tensor([[[math.log(9.0), 0.0]], [[0.0, 0.0]]])  # p = (0.9, 0.1) and uniform
    h_a = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    h_b = math.log(2)
    w = entropy_weights(logits)  # published: 1 - H_k / sum_j H_j
    assert w[0, 0].item() == pytest.approx(1 - h_a / (h_a + h_b), abs=1e-6)
    assert w[1, 0].item() == pytest.approx(1 - h_b / (h_a + h_b), abs=1e-6)
    assert entropy_weights(logits[:1]).item() == 1.0
    # the earlier reading, softmax_k(-H_k), as an option: teacher B is uniform (KL 0 from a uniform student)
    soft = build_method("ebkd", {"temperature": 1.0, "weighting": "softmax"}, 2, [2, 2], 2)
    teachers = [_teacher((math.log(9.0), 0.0)), _teacher((0.0, 0.0))]
    kl_a = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    w_a = math.exp(-h_a) / (math.exp(-h_a) + math.exp(-h_b))
    assert soft(_student(), teachers, torch.tensor([0]), S)["ebkd"].item() == pytest.approx(
        w_a * kl_a, abs=1e-6
    )
    published = build_method("ebkd", {"temperature": 1.0}, 2, [2, 2], 2)
    got = published(_student(), teachers, torch.tensor([0]), S)["ebkd"].item()
    assert got == pytest.approx((1 - h_a / (h_a + h_b)) * kl_a / 2, abs=1e-6)  # sum over k, b / (B K)


def test_confidence_weights_by_hand():
    logits = torch.tensor([[[math.log(9.0), 0.0]], [[0.0, 0.0]]])
    ce_a, ce_b = -math.log(0.9), -math.log(0.5)
    s_a = math.exp(ce_a) / (math.exp(ce_a) + math.exp(ce_b))
    w = confidence_weights(logits, torch.tensor([0]))
    assert w[0, 0].item() == pytest.approx(1 - s_a, abs=1e-6)  # (1 - softmax_k CE_k) / (K - 1), K = 2
    assert w[1, 0].item() == pytest.approx(s_a, abs=1e-6)
    assert confidence_weights(logits[:1], torch.tensor([0])).item() == 1.0


def test_camkd_terms_by_hand():
    options = {"temperature": 1.0, "feature_weight": 2.0, "feature": "pooled"}
    cam = build_method("camkd", options, 2, [2, 2], 2)
    with torch.no_grad():
        for p in cam.projectors:
            p.weight.copy_(torch.eye(2))
            p.bias.zero_()
    teachers = [_teacher((math.log(9.0), 0.0), (1.0, 0.0)), _teacher((0.0, 0.0), (0.0, 1.0))]
    terms = cam(_student(), teachers, torch.tensor([0]), Step(epoch=1))
    w_a = 1 - math.exp(-math.log(0.9)) / (math.exp(-math.log(0.9)) + 2.0)
    kl_a = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    # teacher B is uniform: KL 0; the weighted sum over teachers and rows is divided by B K = 2
    assert terms["camkd"].item() == pytest.approx(w_a * kl_a / 2, abs=1e-6)
    # student features (1, 0): distance 0 to A, 2 to B (normalised, orthogonal); pooled: from epoch 1
    assert terms["camkd_features"].item() == pytest.approx(2.0 * (1 - w_a) * 2.0, abs=1e-6)
    published = build_method("camkd", {"temperature": 1.0}, 2, [2, 2], 2)
    assert set(published(_student(), teachers, torch.tensor([0]), Step(epoch=1))) == {"camkd"}


def test_feature_distances_by_hand():
    pred, target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert feature_distance(pred, target, "mse").item() == pytest.approx(2.0)
    assert feature_distance(pred, target, "cosine").item() == pytest.approx(1.0)
    assert feature_distance(pred, target, "smooth_l1").item() == pytest.approx((0.5 + 1.5) / 2)


def _projectors_and_targets(dims, kinds, rows=6, dim_in=5, dtype=torch.float64):
    torch.manual_seed(0)
    projs = [projector(kind, dim_in, d, 4).to(dtype).eval() for kind, d in zip(kinds, dims, strict=True)]
    targets = [torch.randn(rows, d, dtype=dtype) for d in dims]
    targets[0][1] = 0.0  # an all-zero teacher vector
    return projs, targets


@pytest.mark.parametrize("distance", ["mse", "cosine", "smooth_l1"])
@pytest.mark.parametrize(
    ("dims", "kinds"), [([7, 7, 7], ["linear"] * 3), ([7, 3, 9], ["linear", "mlp", "linear"])]
)
def test_projected_distances_match_autograd_of_the_plain_formula(distance, dims, kinds):
    """The closed-form gradient against autograd through the projection and feature_distance."""
    projs, targets = _projectors_and_targets(dims, kinds)
    params = [p for m in projs for p in m.parameters()]
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    fast = projected_distances(x, projs, targets, distance)
    ref = torch.stack([feature_distance(p(x), t, distance) for p, t in zip(projs, targets, strict=True)])
    if distance == "mse":  # against an all-zero target the plain formula gives 1 and this 2
        assert fast[0, 1].item() == pytest.approx(2.0) and ref[0, 1].item() == pytest.approx(1.0)
        ref = ref.clone()
        ref[0, 1] = 2.0
    torch.testing.assert_close(fast, ref)
    weights = torch.randn_like(ref)
    got = torch.autograd.grad((weights * fast).sum(), [x, *params])
    want = torch.autograd.grad((weights * ref).sum(), [x, *params])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w)
    assert torch.autograd.gradcheck(
        lambda x, *p: projected_distances(x, projs, targets, distance), (x, *params)
    )


@pytest.mark.parametrize("distance", ["cosine", "mse", "smooth_l1"])
def test_projected_distances_in_float32_and_from_inference_tensors(distance):
    """Teacher outputs made under inference_mode (a teacher module that runs itself that way) train
    the projectors with every distance (smooth-L1 saves its target for the backward pass)."""
    projs, targets = _projectors_and_targets(
        [1280] * 4, ["linear"] * 4, rows=128, dim_in=64, dtype=torch.float32
    )
    with torch.inference_mode():
        targets = [t.clone() for t in targets]
    x = torch.randn(128, 64, requires_grad=True)
    fast = projected_distances(x, projs, targets, distance)
    plain = [t.clone() for t in targets]  # outside inference mode: ordinary tensors, the reference
    ref = torch.stack([feature_distance(p(x), t, distance) for p, t in zip(projs, plain, strict=True)])
    if distance == "mse":  # against the all-zero target: 2 here, 1 by the plain formula (same gradient)
        ref = ref.clone()
        ref[0, 1] = 2.0
    torch.testing.assert_close(fast, ref, atol=1e-6, rtol=1e-5)
    fast.sum().backward()
    got = [x.grad, *(p.grad for m in projs for p in m.parameters())]
    x.grad = None
    for m in projs:
        m.zero_grad()
    ref.sum().backward()
    want = [x.grad, *(p.grad for m in projs for p in m.parameters())]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-4)


def _identity_projectors(method):
    with torch.no_grad():
        for p in method.projectors:
            p.weight.copy_(torch.eye(p.weight.shape[0], p.weight.shape[1]))
            p.bias.zero_()


@pytest.mark.parametrize(
    ("combine", "expected"), [("sum", 0.5 * (0.0 + 2.0)), ("learned", 0.5 * (0.0 + 2.0))]
)
def test_features_sum_and_learned_by_hand(combine, expected):
    method = build_method(
        "features", {"combine": combine, "lambda": 3.0}, 2, [2, 2], 2, teachers_have_logits=False
    )
    _identity_projectors(method)
    teachers = [TeacherOutputs(torch.tensor([[2.0, 0.0]])), TeacherOutputs(torch.tensor([[0.0, 5.0]]))]
    loss = method(_student(), teachers, torch.tensor([0]), S)["features"]
    assert loss.item() == pytest.approx(3.0 * expected, abs=1e-6)  # learned starts at equal weights


def test_features_concat_by_hand():
    method = build_method("features", {"combine": "concat"}, 2, [1, 1], 2, teachers_have_logits=False)
    with torch.no_grad():
        method.projectors[0].weight.copy_(torch.eye(2))
        method.projectors[0].bias.zero_()
    teachers = [TeacherOutputs(torch.tensor([[3.0]])), TeacherOutputs(torch.tensor([[-1.0]]))]
    # target = (1, -1) / sqrt 2; student (1, 0): |(1, 0) - (1, -1)/sqrt2|^2
    expected = (1 - 1 / math.sqrt(2)) ** 2 + (1 / math.sqrt(2)) ** 2
    assert method(_student(), teachers, torch.tensor([0]), S)["features"].item() == pytest.approx(
        expected, abs=1e-6
    )


def test_hint_by_hand():
    opts = {"student_layer": "s", "teacher_layer": "t", "student_channels": 1, "teacher_channels": [1],
            "adapter": "conv1x1", "weight": 1.0}  # fmt: skip
    hint = build_method("hint", opts, 2, [2], 2, teachers_have_logits=False)
    with torch.no_grad():
        hint.adapters[0].weight.fill_(2.0)
        hint.adapters[0].bias.fill_(1.0)
    s_map = torch.ones(1, 1, 2, 2)  # adapter: 2 * 1 + 1 = 3 everywhere
    t_map = torch.arange(16.0).view(1, 1, 4, 4)  # pooled to 2x2: 2.5, 4.5, 10.5, 12.5
    student = StudentOutputs(torch.zeros(1, 2), torch.zeros(1, 2), {"s": s_map})
    teacher = TeacherOutputs(torch.zeros(1, 2), maps={"t": t_map})
    expected = ((3 - 2.5) ** 2 + (3 - 4.5) ** 2 + (3 - 10.5) ** 2 + (3 - 12.5) ** 2) / 4
    assert hint(student, [teacher], torch.tensor([0]), S)["hint"].item() == pytest.approx(expected)


def test_method_errors_are_one_line():
    with pytest.raises(MtkdError, match="unknown method 'fitnet'"):
        build_method("fitnet", {}, 2, [2], 2)
    with pytest.raises(MtkdError, match="no option 'temp'"):
        build_method("kd", {"temp": 2}, 2, [2], 2)
    with pytest.raises(MtkdError, match="bad value for 'combine'"):
        build_method("features", {"combine": "max"}, 2, [2], 2)
    with pytest.raises(MtkdError, match="needs teachers adapted"):
        build_method("avg_kd", {}, 2, [2, 2], 2, teachers_have_logits=False)
    with pytest.raises(MtkdError, match="at most 1 teacher"):
        build_method("kd", {}, 2, [2, 2], 2)


@pytest.mark.parametrize("feature", ["map", "pooled"])
def test_camkd_without_its_feature_term_has_nothing_to_train(feature):
    """feature_weight 0: no embeddings or projectors (under DDP, parameters no step uses would stall
    the gradient reduction), and the same logit term as with them."""
    options = {"temperature": 1.0, "feature_weight": 0.0, "feature": feature}
    cam = build_method("camkd", options, 2, [2, 2], 2)
    assert list(cam.parameters()) == [] and cam.teacher_maps() == []
    teachers = [_teacher((math.log(9.0), 0.0), (1.0, 0.0)), _teacher((0.0, 0.0), (0.0, 1.0))]
    terms = cam(_student(), teachers, torch.tensor([0]), Step(epoch=3))
    with_them = build_method("camkd", {**options, "feature_weight": 2.0, "feature": "pooled"}, 2, [2, 2], 2)
    assert set(terms) == {"camkd"}
    assert (
        terms["camkd"].item()
        == with_them(_student(), teachers, torch.tensor([0]), Step(epoch=3))["camkd"].item()
    )


def test_mtkd_methods_lists_every_method_and_shows_one_with_its_yaml(capsys):
    import yaml

    from mtkd.cli.main import main
    from mtkd.methods import METHODS

    main(["methods"])
    listed = capsys.readouterr().out
    for name in METHODS.names():
        assert f"│ {name} " in listed
    main(["methods", "dkd"])
    shown = capsys.readouterr().out
    assert "Zhao, Cui, Song, Qiu and Liang, CVPR 2022" in shown and "│ beta " in shown
    block = yaml.safe_load(shown[shown.index("transfer:") :])
    assert block == {"transfer": {"methods": [{"name": "dkd", "weight": 1.0, "temperature": 4.0, "alpha": 1.0,
                                               "beta": 8.0, "warmup": 20.0, "standardize": False}]}}  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(["methods", "nosuch"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"mtkd: error: unknown method 'nosuch' (known: {', '.join(METHODS.names())})"
    ]

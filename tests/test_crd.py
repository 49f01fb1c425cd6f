"""`crd` equals its authors' code: values, gradients, memory banks and Z, step after step, in
float64 on random inputs, with 1, 2 and 3 teachers, to 1e-6 relative; and its negatives are what
their "exact" sampler draws.

The reference below is written here from reading HobbitLong/RepDistiller at
b84f547c5db6a35318d4671d7d5c4de74c822403 (never copied), in their order of operations:
- `crd/criterion.py:23-48` (CRDLoss), `:59-76` (ContrastLoss), `:79-103` (Embed, Normalize)
- `crd/memory.py:23-79` (ContrastMemory.forward: scores, Z, the banks' update)
- `dataset/cifar100.py:208-222` (CIFAR100InstanceSample.__getitem__, mode "exact")
With several teachers, mtkd's reading: one CRDLoss per teacher, their mean.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mtkd.methods import StudentOutputs, TeacherOutputs, build_method
from mtkd.methods.base import RunContext, Step
from mtkd.methods.crd import Negatives

# ---- reference -------------------------------------------------------------------------------


class RefNormalize(nn.Module):
    """criterion.py:94-103: x divided by its 2-norm (power 2, then power 1/2)."""

    def forward(self, x):
        norm = x.pow(2).sum(1, keepdim=True).pow(1.0 / 2)
        return x.div(norm)


class RefEmbed(nn.Module):
    """criterion.py:79-91: view as [B, -1], linear, normalise."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = RefNormalize()

    def forward(self, x):
        return self.l2norm(self.linear(x.view(x.shape[0], -1)))


class RefContrastMemory(nn.Module):
    """memory.py:6-79 with the banks given (mtkd's draw of them) instead of drawn here. Their
    `params` buffer is float32, which rounds T and the momentum (0.07, 0.3) by ~1e-8 relative; here
    it is float64, so that the comparison is of the arithmetic, not of that rounding."""

    def __init__(self, memory_v1, memory_v2, k, t, momentum):
        super().__init__()
        self.register_buffer("params", torch.tensor([k, t, -1, -1, momentum], dtype=torch.float64))
        self.register_buffer("memory_v1", memory_v1.clone())
        self.register_buffer("memory_v2", memory_v2.clone())

    def forward(self, v1, v2, y, idx):
        k = int(self.params[0].item())
        t = self.params[1].item()
        z_v1, z_v2 = self.params[2].item(), self.params[3].item()
        momentum = self.params[4].item()
        batch, output_size, input_size = v1.size(0), self.memory_v1.size(0), self.memory_v1.size(1)
        weight_v1 = (
            torch.index_select(self.memory_v1, 0, idx.view(-1)).detach().view(batch, k + 1, input_size)
        )
        out_v2 = torch.exp(torch.div(torch.bmm(weight_v1, v2.view(batch, input_size, 1)), t))
        weight_v2 = (
            torch.index_select(self.memory_v2, 0, idx.view(-1)).detach().view(batch, k + 1, input_size)
        )
        out_v1 = torch.exp(torch.div(torch.bmm(weight_v2, v1.view(batch, input_size, 1)), t))
        if z_v1 < 0:
            self.params[2] = out_v1.mean() * output_size
            z_v1 = self.params[2].clone().detach().item()
        if z_v2 < 0:
            self.params[3] = out_v2.mean() * output_size
            z_v2 = self.params[3].clone().detach().item()
        out_v1 = torch.div(out_v1, z_v1).contiguous()
        out_v2 = torch.div(out_v2, z_v2).contiguous()
        with torch.no_grad():
            l_pos = torch.index_select(self.memory_v1, 0, y.view(-1))
            l_pos.mul_(momentum)
            l_pos.add_(torch.mul(v1, 1 - momentum))
            self.memory_v1.index_copy_(0, y, l_pos.div(l_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
            ab_pos = torch.index_select(self.memory_v2, 0, y.view(-1))
            ab_pos.mul_(momentum)
            ab_pos.add_(torch.mul(v2, 1 - momentum))
            self.memory_v2.index_copy_(0, y, ab_pos.div(ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)))
        return out_v1, out_v2


def ref_contrast_loss(x, n_data):
    """criterion.py:59-76."""
    bsz, m = x.shape[0], x.size(1) - 1
    pn = 1 / float(n_data)
    p_pos = x.select(1, 0)
    log_d1 = torch.div(p_pos, p_pos.add(m * pn + 1e-7)).log_()
    p_neg = x.narrow(1, 1, m)
    log_d0 = torch.div(p_neg.clone().fill_(m * pn), p_neg.add(m * pn + 1e-7)).log_()
    return -(log_d1.sum(0) + log_d0.view(-1, 1).sum(0)) / bsz


class RefCRDLoss(nn.Module):
    """criterion.py:23-48 (params and banks copied from mtkd's module, which draws them)."""

    def __init__(self, ours, k, n_data, opts):
        super().__init__()
        self.embed_s = RefEmbed(ours.embed_s[k].linear.in_features, opts["feat_dim"])
        self.embed_t = RefEmbed(ours.embed_t[k].linear.in_features, opts["feat_dim"])
        self.embed_s.load_state_dict(ours.embed_s[k].state_dict())
        self.embed_t.load_state_dict(ours.embed_t[k].state_dict())
        self.contrast = RefContrastMemory(
            getattr(ours, f"bank_s{k}"),
            getattr(ours, f"bank_t{k}"),
            opts["nce_k"],
            opts["nce_t"],
            opts["nce_m"],
        )
        self.n_data = n_data

    def forward(self, f_s, f_t, idx, contrast_idx):
        out_s, out_t = self.contrast(self.embed_s(f_s), self.embed_t(f_t), idx, contrast_idx)
        return ref_contrast_loss(out_s, self.n_data) + ref_contrast_loss(out_t, self.n_data)


# ---- comparisons -----------------------------------------------------------------------------

B, DS = 8, 24


def _crd(k, n, classes, nce_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    opts = {"feat_dim": 16, "nce_k": nce_k, "nce_t": 0.07, "nce_m": 0.3}  # not 0.5: a swapped momentum shows
    ours = build_method("crd", opts, DS, [40, 56, 32][:k], classes)
    ours.setup(RunContext(labels, seed=seed))
    return ours.double(), labels, opts


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize(("n", "nce_k"), [(40, 30), (500, 16)], ids=["whole-bank-product", "gathered-rows"])
def test_crd_equals_repdistiller_over_steps(k, n, nce_k):
    ours, labels, opts = _crd(k, n, 5, nce_k, seed=k)
    refs = [RefCRDLoss(ours, j, n, opts).double() for j in range(k)]
    g = torch.Generator().manual_seed(100 + k)
    order = torch.randperm(n, generator=g)
    for step in range(3):  # Z is set at the first step and kept; the banks move every step
        index = order[step * B : (step + 1) * B]
        where = Step(epoch=1, step=step, steps_per_epoch=5, epochs=2, index=index)
        f_s = torch.randn(B, DS, generator=g, dtype=torch.float64).requires_grad_()
        f_t = [torch.randn(B, d, generator=g, dtype=torch.float64) for d in (40, 56, 32)[:k]]
        contrast = ours.draw_negatives(where)
        loss = ours(
            StudentOutputs(torch.zeros(B, 5), f_s), [TeacherOutputs(t) for t in f_t], labels[index], where
        )
        ref = 0.8 * torch.stack([r(f_s, t, index, contrast) for r, t in zip(refs, f_t, strict=True)]).mean()
        params = [f_s, *ours.parameters()]
        ref_params = [f_s, *[p for r in refs for p in r.embed_s.parameters()]]
        ref_params += [p for r in refs for p in r.embed_t.parameters()]
        grads = torch.autograd.grad(loss["crd"], params)
        ref_grads = torch.autograd.grad(ref, ref_params)
        assert loss["crd"].item() == pytest.approx(ref.item(), rel=1e-6)
        for a, b in zip(grads, ref_grads, strict=True):  # embed_s/embed_t of each teacher, in order
            # 1e-6 relative to the gradient's scale: an element that sums terms of exp(1 / 0.07) ~ 1e6
            # and nearly cancels carries their rounding (the whole-bank product sums in another order).
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item())
        for j, r in enumerate(refs):
            torch.testing.assert_close(
                getattr(ours, f"bank_s{j}"), r.contrast.memory_v1, rtol=1e-6, atol=1e-12
            )
            torch.testing.assert_close(
                getattr(ours, f"bank_t{j}"), r.contrast.memory_v2, rtol=1e-6, atol=1e-12
            )
            assert ours.z[j, 0].item() == pytest.approx(r.contrast.params[2].item(), rel=1e-6)
            assert ours.z[j, 1].item() == pytest.approx(r.contrast.params[3].item(), rel=1e-6)


def test_crd_banks_start_as_the_authors_draw_them():
    ours, labels, opts = _crd(2, 300, 4, 16)
    stdv = 1.0 / math.sqrt(opts["feat_dim"] / 3)
    for name in ("bank_s0", "bank_t0", "bank_s1", "bank_t1"):
        bank = getattr(ours, name)
        assert bank.shape == (300, 16)
        assert bank.min() >= -stdv and bank.max() <= stdv
        assert bank.mean().abs() < 0.05 and bank.std().item() == pytest.approx(
            2 * stdv / math.sqrt(12), rel=0.05
        )
    assert (ours.z == -1).all()
    again, _, _ = _crd(2, 300, 4, 16)  # a pure function of the run's seed
    assert torch.equal(again.bank_t1, ours.bank_t1)


def test_negatives_are_their_exact_sampler():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 30 + [1] * 50 + [2] * 20)[torch.randperm(100, generator=g)]
    index = torch.arange(100)
    # 60 negatives: classes 0 and 2 have 70 and 80 images of other classes, class 1 only 50
    sampler = Negatives(labels, 60)
    draws = sampler.draw(index, 1)
    assert torch.equal(draws[:, 0], index)  # "exact": the positive is the image itself
    negatives = draws[:, 1:]
    assert (labels[negatives] != labels[:, None]).all()  # never an image of its own class
    for row in range(100):
        others = int((labels != labels[row]).sum())
        distinct = len(set(negatives[row].tolist()))
        if others >= 60:  # their replace = k > len(cls_negative): without replacement here
            assert distinct == 60
        else:  # class 1: 50 images of other classes for 60 draws, with replacement
            assert distinct <= others
    again = sampler.draw(index, 1)
    assert torch.equal(draws, again)
    # An image's negatives do not depend on the batch (or process) it is in: one process's rows are
    # drawn as in a single process's batch.
    assert torch.equal(sampler.draw(index[[70, 3]], 1), draws[[70, 3]])
    assert not torch.equal(sampler.draw(index, 2), draws)


@pytest.mark.parametrize("k", [5, 400])
def test_negatives_are_uniform_over_the_other_classes(k):
    """Each other-class image is drawn equally often (chi-square, 3 classes of 10, 20, 30)."""
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    sampler = Negatives(labels, k)
    index = torch.tensor([0, 15])  # one image of class 0, one of class 1
    counts = torch.zeros(2, 60)
    rounds = 4000 // k + 20
    for salt in range(rounds):
        d = sampler.draw(index, salt)[:, 1:]
        for row in range(2):
            counts[row] += torch.bincount(d[row], minlength=60)
    for row, own in enumerate((slice(0, 10), slice(10, 30))):
        assert counts[row, own].sum() == 0
        other = torch.cat([counts[row, : own.start], counts[row, own.stop :]])
        expected = other.sum() / len(other)
        chi2 = ((other - expected) ** 2 / expected).sum().item()
        assert chi2 < 100, chi2  # 49 or 39 degrees of freedom: the 0.999 quantile is below 90


def test_crd_refuses_mixed_labels_and_one_class():
    from mtkd.errors import MtkdError

    ours = build_method("crd", {"nce_k": 4}, DS, [8], 2)
    ours.setup(RunContext(torch.zeros(10, dtype=torch.long)))
    where = Step(index=torch.arange(4))
    with pytest.raises(MtkdError, match="at least two classes"):
        ours(
            StudentOutputs(torch.zeros(4, 2), torch.randn(4, DS)),
            [TeacherOutputs(torch.randn(4, 8))],
            None,
            where,
        )
    assert type(ours).hard_labels

"""`crd`: contrastive representation distillation (Tian, Krishnan and Isola, ICLR 2020), as its
authors publish it in HobbitLong/RepDistiller at b84f547 (`crd/criterion.py`, `crd/memory.py`).

For each teacher k, the pooled features of student and teacher are embedded (`Embed`,
criterion.py:79-103: a linear layer to `feat_dim`, then divided by its L2 norm), v_s and v_t.
Two memory banks of one row per training image hold earlier embeddings: the student's (their
`memory_v1`) and the teacher's (`memory_v2`), drawn uniform in +-1/sqrt(feat_dim/3)
(memory.py:19-21). For the batch's images i and, per image, `nce_k` negatives j drawn from the
images of other classes ("exact" mode: `dataset/cifar100.py:208-222`, without replacement unless a
class has fewer other-class images than `nce_k`), with the positive i in column 0:

    P_s[i, j] = exp(<bank_t[j], v_s[i]> / nce_t) / Z_s,   P_t[i, j] = exp(<bank_s[j], v_t[i]> / nce_t) / Z_t

(memory.py:38-61), Z set once from the first batch as mean(exp(...)) * N (memory.py:49-57). The
NCE loss of one side, with m = nce_k and Pn = 1/N (criterion.py:59-76, eps 1e-7):

    L(P) = -(sum_i log(P[i,0] / (P[i,0] + m Pn + eps)) + sum_{i,j>0} log(m Pn / (P[i,j] + m Pn + eps))) / B
    crd_k = L(P_s) + L(P_t)

and afterwards each bank's rows of the batch move to normalise(nce_m * row + (1 - nce_m) * v)
(memory.py:63-77). Defaults are the authors' CIFAR-100 settings (`train_student.py` arguments,
`scripts/run_cifar_distill.sh:29`: `--distill crd -a 0 -b 0.8`): feat_dim 128, nce_k 16384,
nce_t 0.07, nce_m 0.5, weight 0.8.

Several teachers (mtkd's extension; the authors distil from one): an embedding pair and a pair
of banks per teacher, the mean over teachers of crd_k. The banks, and Z, are buffers: they live
in the resume state, and the negatives of a step are drawn from a generator seeded by (seed,
epoch, step, image), so an interrupted run resumes with the same bits, and under torchrun each
image gets the negatives it gets in one process. There every process updates its banks with the
whole global batch (gathered), so the banks stay the same everywhere, and Z is the mean over the
global batch: the steps are those of one process, up to the order of float sums. Memory:
2 x N x feat_dim floats per teacher (N = 60,000 images, 128 dims: 61 MB per teacher).

How it computes, not what: <bank[j], v[i]> over all j of the bank as one matrix product, then
the batch's columns picked, where that reads fewer numbers than gathering B (nce_k + 1) rows
(equal to their per-row product up to float rounding).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from mtkd.dist import gathered, mean_over_processes
from mtkd.errors import MtkdError
from mtkd.methods.base import (
    Method,
    MethodOptions,
    RunContext,
    Step,
    StudentOutputs,
    TeacherOutputs,
    register,
)

EPS = 1e-7  # crd/criterion.py:5


class CRDOptions(MethodOptions):
    weight: float = Field(0.8, ge=0, description="-b of the authors' CIFAR-100 command")
    feat_dim: int = Field(128, ge=1, description="dimension of the embeddings and of the memory banks")
    nce_k: int = Field(16384, ge=1, description="negatives per image")
    nce_t: float = Field(0.07, gt=0, description="temperature of the scores")
    nce_m: float = Field(0.5, ge=0, lt=1, description="momentum of the memory banks' update")


class Embed(nn.Module):
    """A linear layer, then each row divided by its L2 norm (criterion.py:79-103, no eps)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x.flatten(1))
        return x / x.pow(2).sum(1, keepdim=True).pow(0.5)


def nce_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """The NCE loss of scores p [B, 1 + m], the positive in column 0 (criterion.py:59-76)."""
    m = p.shape[1] - 1
    noise = m / n_data
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + noise + EPS))
    log_d0 = torch.log(noise / (p[:, 1:] + noise + EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def bank_scores(bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """<bank[idx[i, j]], v[i]> as [B, 1 + m]: one product with the whole bank, then the batch's
    columns, when that reads fewer numbers than gathering the rows (a copy of the bank: the
    backward pass of the product needs the bank as it was before this step's update)."""
    if idx.numel() > bank.shape[0]:
        return (v @ bank.detach().clone().t()).gather(1, idx)
    return torch.bmm(bank[idx], v.unsqueeze(2)).squeeze(2)


class Negatives:
    """Draws, for each image, `k` training images of other classes ("exact" mode), uniformly without
    replacement, or with replacement where its class has fewer than `k` other-class images. Each
    image's draw comes from its own generator, seeded by (salt, image): the same whatever batch, or
    process, the image is in."""

    def __init__(self, labels: torch.Tensor, k: int):
        labels = labels.long().cpu()
        self.n, self.k = len(labels), k
        self.labels = labels
        self.order = torch.argsort(labels, stable=True)  # images grouped by class
        counts = torch.bincount(labels)
        self.start = torch.cumsum(counts, 0) - counts  # where each class's block begins in `order`
        self.counts = counts

    def draw(self, index: torch.Tensor, salt: int) -> torch.Tensor:
        """[B, 1 + k]: each image itself in column 0, then its negatives."""
        index = index.cpu()
        out = torch.empty(len(index), 1 + self.k, dtype=torch.long)
        out[:, 0] = index
        gen = torch.Generator()
        for row, i in enumerate(index.tolist()):
            gen.manual_seed(salt * 1_000_003 + i)
            c = int(self.labels[i])
            others = self.n - int(self.counts[c])
            if others == 0:
                raise MtkdError("method 'crd' needs images of at least two classes")
            if others < self.k:  # with replacement: a uniform position among the other classes' images
                pos = torch.randint(0, others, (self.k,), generator=gen)
                pos += int(self.counts[c]) * (pos >= int(self.start[c]))
                out[row, 1:] = self.order[pos]
            else:  # without replacement: the k smallest of random keys, its own class excluded
                keys = torch.rand(self.n, generator=gen)
                keys[self.labels == c] = 2.0
                out[row, 1:] = keys.topk(self.k, largest=False, sorted=False).indices
        return out


@register
class CRD(Method):
    name = "crd"
    paper = "Tian, Krishnan and Isola, ICLR 2020, Contrastive Representation Distillation"
    reads = ("pooled features",)
    trains = (
        "a linear embedding of the student and of each teacher (two memory banks per teacher, not trained)"
    )
    Options = CRDOptions
    hard_labels = True  # an image and its negatives are told apart by class

    def __init__(self, options: CRDOptions, student_dim: int, teacher_dims: list[int], num_classes: int):
        super().__init__(options, student_dim, teacher_dims, num_classes)
        self.embed_s = nn.ModuleList(Embed(student_dim, options.feat_dim) for _ in teacher_dims)
        self.embed_t = nn.ModuleList(Embed(d, options.feat_dim) for d in teacher_dims)
        self.teachers = len(teacher_dims)
        self.negatives: Negatives | None = None
        self.seed = 0

    def setup(self, run: RunContext) -> None:
        """The memory banks (one row per training image), drawn from the run's seed."""
        o, n = self.options, len(run.labels)
        self.negatives = Negatives(run.labels, o.nce_k)
        self.seed = run.seed
        gen = torch.Generator().manual_seed(run.seed * 7_919 + 17)
        stdv = 1.0 / math.sqrt(o.feat_dim / 3)
        for k in range(self.teachers):
            for side in ("s", "t"):
                bank = torch.rand(n, o.feat_dim, generator=gen).mul_(2 * stdv).add_(-stdv)
                self.register_buffer(f"bank_{side}{k}", bank)
        self.register_buffer("z", torch.full((self.teachers, 2), -1.0))  # Z_s, Z_t; -1: not set yet

    def draw_negatives(self, step: Step) -> torch.Tensor:
        """This process's [B, 1 + nce_k] contrast indices: a pure function of (seed, epoch, step, image)."""
        assert self.negatives is not None and step.index is not None, "crd: setup() and Step.index first"
        return self.negatives.draw(step.index, (self.seed * 1_000_003 + step.epoch) * 100_003 + step.step)

    def forward(
        self, student: StudentOutputs, teachers: list[TeacherOutputs], labels: torch.Tensor, step: Step
    ) -> dict[str, torch.Tensor]:
        o = self.options
        feats = student.features
        idx = self.draw_negatives(step).to(feats.device)
        every_row = gathered(idx[:, 0])
        n = len(self.bank_s0)
        losses = []
        # In the banks' precision (float32 under autocast too: exp(1 / nce_t) overflows float16).
        with torch.autocast(feats.device.type, enabled=False):
            for k, teacher in enumerate(teachers):
                bank_s, bank_t = getattr(self, f"bank_s{k}"), getattr(self, f"bank_t{k}")
                v_s = self.embed_s[k](feats.to(bank_s.dtype))
                v_t = self.embed_t[k](teacher.features.to(bank_s.dtype))
                p_s = torch.exp(bank_scores(bank_t, v_s, idx) / o.nce_t)
                p_t = torch.exp(bank_scores(bank_s, v_t, idx) / o.nce_t)
                if self.z[k, 0] < 0:  # first step: Z from the (global) batch, kept from then on
                    self.z[k, 0] = mean_over_processes(p_s.mean().detach()) * n
                    self.z[k, 1] = mean_over_processes(p_t.mean().detach()) * n
                z = self.z[k].clone()  # (the next teacher's first step writes into self.z)
                losses.append(nce_loss(p_s / z[0], n) + nce_loss(p_t / z[1], n))
                with torch.no_grad():
                    self._move(bank_s, every_row, gathered(v_s.detach()))
                    self._move(bank_t, every_row, gathered(v_t.detach()))
        return {"crd": o.weight * torch.stack(losses).mean()}

    def _move(self, bank: torch.Tensor, rows: torch.Tensor, v: torch.Tensor) -> None:
        m = self.options.nce_m
        pos = bank[rows] * m + v * (1 - m)
        bank.index_copy_(0, rows, pos / pos.pow(2).sum(1, keepdim=True).pow(0.5))

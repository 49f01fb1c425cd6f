"""Cosine between linearly projected student features and fixed teacher features, for K
teachers at once, with the gradient written out so that the projection is never formed.

For one teacher, with x [B, d] the projector's input, W [D, d], b [D] its last linear layer,
and t [B, D] the teacher's features (no gradient):

    q = W x + b,   c = <q, t> / (max(|q|, eps) max(|t|, eps))

Writing a = [x, 1] and V = [W, b], both <q, t> = a . (t V) and |q|^2 = a (V^T V) a only
need [B, d+1] and [d+1, d+1] products, and so does the gradient:

    dL/dV = t^T (alpha a) + 2 V (a^T (gamma a)),   dL/da = alpha (t V) + 2 gamma (a V^T V)
    alpha = g / (|q| |t|),   gamma = -g c / (2 |q|^2)       (g = dL/dc; gamma = 0 where |q| <= eps)

The K teachers go through batched matmuls (zero-padded when their sizes differ). The
autograd version builds q and several [B, D] temporaries per teacher, forward and backward;
with D = 1280 and d = 64 these cost more than the matmuls themselves: 4 teachers, B = 128,
5.4 ms a step against 2.5 ms here (benchmarks/bench_feature_term.py). Computed in float32
at least, whatever the autocast; values and gradients equal the autograd version's up to
float rounding.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


class _ProjectedCosine(torch.autograd.Function):
    @staticmethod
    def forward(ctx, eps: float, k: int, *tensors: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        xs, ws, bs, ts = (tensors[i * k : (i + 1) * k] for i in range(4))
        dtype = torch.promote_types(xs[0].dtype, torch.float32)
        dims = [tuple(w.shape) for w in ws]  # (out, in) of each last linear layer
        n, m, rows = max(o for o, _ in dims), max(i for _, i in dims), xs[0].shape[0]
        # a, v and t each hold all K teachers; sizes that differ are zero-padded (zero rows and
        # columns add nothing to any product below). The last column of a is 1, of v the bias.
        new = xs[0].new_empty if len(set(dims)) == 1 else xs[0].new_zeros
        a, v, t = (
            new(k, rows, m + 1, dtype=dtype),
            new(k, n, m + 1, dtype=dtype),
            new(k, rows, n, dtype=dtype),
        )
        a[:, :, -1] = 1
        for i, (o, d) in enumerate(dims):
            a[i, :, :d], t[i, :, :o], v[i, :o, :d], v[i, :o, -1] = xs[i], ts[i], ws[i], bs[i]
        off = (
            torch.autocast(a.device.type, enabled=False)
            if a.device.type in ("cpu", "cuda")
            else nullcontext()
        )
        with off:
            tv = torch.bmm(t, v)
            av = torch.bmm(a, torch.bmm(v.transpose(1, 2), v))
            q_norm = (av * a).sum(2).clamp_min(0).sqrt()
            q_clamped = q_norm.clamp_min(eps)
            scale = q_clamped * torch.linalg.vector_norm(t, dim=2).clamp_min(eps)
            c = (tv * a).sum(2) / scale
        ctx.save_for_backward(a, v, t, tv, av, c, scale, q_clamped, q_norm > eps)
        ctx.meta = (dims, [x.dtype for x in tensors[: 3 * k]])
        return c

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        a, v, t, tv, av, c, scale, q_clamped, moving = ctx.saved_tensors
        dims, dtypes = ctx.meta
        k = len(dims)
        g = grad.to(a.dtype)
        alpha = (g / scale).unsqueeze(2)
        gamma = torch.where(moving, -g * c / (2 * q_clamped.square()), 0).unsqueeze(2)
        grad_v = torch.baddbmm(
            torch.bmm(t.transpose(1, 2), alpha * a), v, torch.bmm(a.transpose(1, 2), 2 * gamma * a)
        )
        grad_a = alpha * tv + 2 * gamma * av
        gx = [grad_a[i, :, :d].to(dtypes[i]) for i, (_, d) in enumerate(dims)]
        gw = [grad_v[i, :o, :d].to(dtypes[k + i]) for i, (o, d) in enumerate(dims)]
        gb = [grad_v[i, :o, -1].to(dtypes[2 * k + i]) for i, (o, _) in enumerate(dims)]
        return (None, None, *gx, *gw, *gb, *([None] * k))


def _split(proj: nn.Module) -> tuple[nn.Module | None, nn.Linear]:
    """A projector as (the layers before its last linear layer, that layer)."""
    if isinstance(proj, nn.Linear):
        return None, proj
    if isinstance(proj, nn.Sequential) and isinstance(proj[-1], nn.Linear):
        return proj[:-1], proj[-1]
    raise TypeError(f"projector must end with nn.Linear, got {type(proj).__name__}")


def projected_cosines(
    features: torch.Tensor, projectors: list[nn.Module], targets: list[torch.Tensor], eps: float
) -> torch.Tensor:
    """cos(P_k(features), targets[k]) per sample, as [K, B]; norms are clamped at `eps`."""
    xs, weights, biases = [], [], []
    for proj in projectors:
        head, last = _split(proj)
        xs.append(features if head is None else head(features))
        weights.append(last.weight)
        biases.append(last.bias)
    return _ProjectedCosine.apply(eps, len(xs), *xs, *weights, *biases, *(t.detach() for t in targets))

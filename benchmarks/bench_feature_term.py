"""The `features` term alone: the autograd form (project, normalise, subtract, square) against
the closed form of mtkd.methods.projected, forward + backward, alternated in one process.

    python benchmarks/bench_feature_term.py [--teachers 4] [--batch 128] [--student-dim 64]
        [--teacher-dim 1280] [--steps 300] [--rounds 3]

Prints the milliseconds a step of each and their ratio, and the largest relative difference
of the loss and of the gradients between the two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.methods.base import projected_distances


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--teachers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--student-dim", type=int, default=64)
    ap.add_argument("--teacher-dim", type=int, default=1280)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    k = args.teachers
    projs = nn.ModuleList(nn.Linear(args.student_dim, args.teacher_dim) for _ in range(k))
    targets = [torch.randn(args.batch, args.teacher_dim).relu() for _ in range(k)]  # pooled ReLU-like
    feats = torch.randn(args.batch, args.student_dim)

    def autograd_form(s: torch.Tensor) -> torch.Tensor:
        dist = [
            (F.normalize(p(s), dim=1) - F.normalize(t, dim=1)).pow(2).sum(1).mean()
            for p, t in zip(projs, targets, strict=True)
        ]
        return torch.stack(dist).mean()

    def closed_form(s: torch.Tensor) -> torch.Tensor:
        return projected_distances(s, list(projs), targets, "mse").mean(1).mean()

    def step(fn) -> list[torch.Tensor]:  # noqa: ANN001
        s = feats.clone().requires_grad_()
        projs.zero_grad()
        loss = fn(s)
        loss.backward()
        return [loss.detach(), s.grad, *(p.grad for p in projs.parameters())]

    ref, got = step(autograd_form), step(closed_form)
    worst = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(got, ref, strict=True))
    times: dict[str, list[float]] = {"autograd form": [], "closed form": []}
    for _ in range(args.rounds):
        for name, fn in (("autograd form", autograd_form), ("closed form", closed_form)):
            for _ in range(10):
                step(fn)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(fn)
            times[name].append((time.perf_counter() - start) / args.steps * 1e3)
    print(f"{k} teachers, batch {args.batch}, {args.student_dim} -> {args.teacher_dim}, "
          f"threads {torch.get_num_threads()}, median of {args.rounds} rounds of {args.steps} steps")  # fmt: skip
    base = statistics.median(times["autograd form"])
    for name, values in times.items():
        ms = statistics.median(values)
        print(f"{name:<16}{ms:8.2f} ms a step  {ms / base:6.2f}")
    print(f"largest relative difference (loss, gradients): {worst:.1e}")


if __name__ == "__main__":
    main()

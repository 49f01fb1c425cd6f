"""Several processes training one model, through torchrun and torch.distributed.

`torchrun` (or `mtkd train --nproc N`) sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins the
process group (nccl on CUDA, gloo on the CPU) and gives each process its device. Without those
variables everything here is a no-op and a run is one ordinary process.

A global batch of B rows is split into WORLD_SIZE equal contiguous shards; every random choice
(order, crops, flips, views) is drawn for the whole global batch and then sliced; with
`train.sync_bn` batch norm statistics are reduced across processes too, and then N processes
compute the same steps as one.
"""

from __future__ import annotations

import inspect
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mtkd.errors import MtkdError


@dataclass(frozen=True)
class Dist:
    """This process's place among the processes of a run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def shard(self, n: int) -> slice:
        """This process's contiguous part of n rows (the parts differ in size by at most one)."""
        base, extra = divmod(n, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, obj: object) -> object:
        """Rank 0's value of obj, in every process."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every process's tensor (all of the same shape), in rank order, on the CPU."""
        if not self.active:
            return [t]
        t = t.to(_comm_device())
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t)
        return [p.cpu() for p in parts]

    def gather_rows(self, part: torch.Tensor) -> torch.Tensor:
        """Concatenate every process's rows in rank order (CPU tensors in, a CPU tensor out)."""
        if not self.active:
            return part
        parts: list = [None] * self.world
        dist.all_gather_object(parts, part.cpu())
        return torch.cat(parts)


SINGLE = Dist()  # one process on its own


def _comm_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def env_dist() -> Dist:
    """The placement torchrun gave this process (rank 0 of 1 without torchrun)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as exc:
        raise MtkdError(f"torchrun environment is malformed: {exc}") from None
    return Dist(rank, world, local)


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by torchrun; the device of this process (cuda:LOCAL_RANK)."""
    place = env_dist()
    if not place.active:
        return place, device
    _die_with_launcher()
    if device.type == "cuda":
        gpus, here = torch.cuda.device_count(), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        if here > gpus:  # two processes on one card would share it and slow each other down
            raise MtkdError(
                f"{here} processes on this machine but {gpus} CUDA device(s): start one process per GPU "
                f"(--nproc {gpus}), or train on the CPU (train.device cpu)"
            )
        device = torch.device("cuda", place.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return place, device


def _die_with_launcher() -> None:
    """torchrun starts its workers in sessions of their own, so a launcher killed with SIGKILL would
    leave them training on; on Linux each worker asks for SIGTERM when its launcher dies."""
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before we asked
        os.kill(os.getpid(), signal.SIGTERM)


def wrap(
    module: nn.Module, place: Dist, device: torch.device, sync_bn: bool, find_unused: bool = False
) -> nn.Module:  # fmt: skip
    """DistributedDataParallel around the trained module.

    sync_bn: batch norm over the global batch, so the steps are those of one process. Without
    it each process normalises its own rows and rank 0's running statistics are broadcast at
    every step (DDP's default, and timm's and torchvision's).
    find_unused: some steps leave some parameters out (a method's term that starts later).
    """
    if not place.active:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        sync_batch_norm(module, device)
    ids = [device] if device.type == "cuda" else None
    options = {}
    if sync_bn:  # synced running statistics are the same everywhere: no need to broadcast them
        known = inspect.signature(DistributedDataParallel.__init__).parameters
        options["forward_sync_buffers" if "forward_sync_buffers" in known else "broadcast_buffers"] = False
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused, **options)


def sync_batch_norm(module: nn.Module, device: torch.device) -> None:
    """Make every batch norm in `module` normalise with the statistics of the global batch, in place.

    CUDA uses torch's SyncBatchNorm; the CPU (where torch's does not run) uses SyncedBatchNorm below.
    Parameters and buffers are the same objects, so optimisers and checkpoints are unaffected.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, nn.SyncBatchNorm | SyncedBatchNorm
        ):
            new = (
                SyncedBatchNorm.like(child)
                if device.type != "cuda"
                else nn.SyncBatchNorm.convert_sync_batchnorm(child)
            )
            setattr(module, name, new)
        else:
            sync_batch_norm(child, device)


class SyncedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all processes, by a differentiable all-reduce (any backend)."""

    @classmethod
    def like(cls, bn: nn.modules.batchnorm._BatchNorm) -> SyncedBatchNorm:
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        c = x.shape[1]
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes, differentiable: the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx: object, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def cleanup() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---- collectives for methods that keep state of their own (CRD's banks, MTKD-RL's agent) --------


def world_size() -> int:
    """Processes in the running torchrun group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gathered(x: torch.Tensor) -> torch.Tensor:
    """x of every process, stacked along the first dimension in rank order (x itself alone)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def mean_over_processes(x: torch.Tensor) -> torch.Tensor:
    """The mean of x over processes (x itself alone); a new tensor, x is left as it is."""
    if world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / world_size()

"""The training loop shared by students and teachers.

One epoch is a seeded permutation of the in-memory training tensors; the order and the
augmentation of epoch e depend only on (seed, e), and the global RNG state is saved with
every checkpoint, so `--resume` ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.console import make_progress, say
from mtkd.data.batches import batch_indices, epoch_generator
from mtkd.engine.checkpoint import load_train_state, load_weights, read_meta, save_checkpoint
from mtkd.engine.config import LoopConfig, OptimConfig, OutputConfig, ScheduleConfig
from mtkd.engine.logger import MetricsLog
from mtkd.errors import MtkdError

# A batch transform: (raw batch, training?, generator) -> model input
Transform = Callable[[torch.Tensor, bool, torch.Generator | None], torch.Tensor]
# A training loss: (row indices, raw batch, labels, generator) -> (logits, named loss terms)
LossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, torch.Tensor]]
]


@dataclass
class FitData:
    """The tensors a run trains and validates on (uint8 images, or precomputed features)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    for g in groups:
        g.setdefault("lr", cfg.lr)
    if cfg.name == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay down to `floor`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.inference_mode()
def predict(
    model: nn.Module, x: torch.Tensor, transform: Transform, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Logits for every row of x, in order."""
    was_training = model.training
    model.eval()
    out = [
        model(transform(x[i].to(device), False, None)).float().cpu()
        for i in batch_indices(len(x), batch_size, False)
    ]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


class Trainer:
    """Fit `model` on `data` with checkpoints in `out.dir`.

    model: what the optimizer trains (student, a teacher's head, or a whole teacher);
    saved: the module whose weights are checkpointed (defaults to model);
    meta: what every checkpoint JSON records besides metrics (kind, model spec, data, config).
    """

    def __init__(
        self,
        model: nn.Module,
        data: FitData,
        transform: Transform,
        groups: list[dict],
        optim: OptimConfig,
        schedule: ScheduleConfig,
        loop: LoopConfig,
        out: OutputConfig,
        meta: dict,
        device: torch.device,
        saved: nn.Module | None = None,
        loss_fn: LossFn | None = None,
        extra: nn.Module | None = None,
    ):
        self.model, self.saved = model, saved if saved is not None else model
        self.loss_fn = loss_fn or self._cross_entropy
        self.extra = extra  # trained with the model (a method's projectors), kept only in the resume state
        self.data, self.transform = data, transform
        self.loop, self.schedule, self.out, self.meta, self.device = loop, schedule, out, meta, device
        self.folder = Path(out.dir)
        n = len(data.train_y)
        self.drop_last = n > loop.batch_size
        self.steps_per_epoch = n // loop.batch_size if self.drop_last else 1
        total = self.steps_per_epoch * schedule.epochs
        warmup = round(schedule.warmup_epochs * self.steps_per_epoch)
        self.optimizer = make_optimizer(groups, optim)
        floor = schedule.min_lr / optim.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, total, warmup, floor)
        )
        self.start_epoch = 0
        self.best = {"epoch": 0, "val_acc": -1.0}

    def resume(self) -> None:
        """Continue from `last` in the output folder, which must come from the same config."""
        meta = read_meta(self.folder / "last.json")
        diff = _first_difference(_run_defining(meta.get("config")), _run_defining(self.meta.get("config")))
        if diff:
            raise MtkdError(f"cannot resume {self.folder}: its config differs at '{diff}'")
        self.saved.load_state_dict(load_weights(meta))
        state = load_train_state(meta)
        if self.extra is not None:
            self.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in state:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.start_epoch, self.best = int(state["epoch"]), dict(state["best"])
        say(f"resuming {self.folder} after epoch {self.start_epoch}")

    def fit(self) -> dict:
        """Train to the last epoch; returns the final row of metrics and the best epoch."""
        log = MetricsLog(self.folder, self.out.tensorboard, self.start_epoch)
        row: dict = {}
        try:
            for epoch in range(self.start_epoch + 1, self.schedule.epochs + 1):
                row = self._epoch(epoch)
                val_acc = row["val_acc"]
                improved = val_acc > self.best["val_acc"]
                if improved:
                    self.best = {"epoch": epoch, "val_acc": val_acc}
                log.log(row)
                self._save(epoch, row, improved)
                say(
                    f"epoch {epoch}/{self.schedule.epochs}  loss {row['train_loss']:.4f}  "
                    f"train acc {row['train_acc']:.4f}  val acc {val_acc:.4f}  {row['train_ips']:.0f} img/s"
                    + ("  *best" if improved else "")
                )
        finally:
            log.close()
        return {"last": row, "best": self.best}

    def _cross_entropy(
        self, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.model(self.transform(x, True, gen))
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.loop.label_smoothing)}

    def _epoch(self, epoch: int) -> dict:
        self.model.train()
        if self.extra is not None:
            self.extra.train()
        gen = epoch_generator(self.loop.seed, epoch)
        x, y = self.data.train_x, self.data.train_y
        total_loss, correct, seen = 0.0, 0, 0
        term_sums: dict[str, float] = {}
        start = time.perf_counter()
        progress = make_progress(self.out.progress)
        with progress:
            task = progress.add_task(f"epoch {epoch}", total=self.steps_per_epoch, loss=0.0, acc=0.0, ips=0.0)
            for index in batch_indices(len(y), self.loop.batch_size, True, gen, self.drop_last):
                batch = x[index].to(self.device, non_blocking=True)
                target = y[index].to(self.device, non_blocking=True)
                logits, terms = self.loss_fn(index, batch, target, gen)
                loss = torch.stack(list(terms.values())).sum()
                if not torch.isfinite(loss):
                    bad = next(k for k, v in terms.items() if not torch.isfinite(v))
                    raise MtkdError(
                        f"loss term '{bad}' is {terms[bad].item()} at epoch {epoch}; lower the learning rate"
                    )
                for key, value in terms.items():
                    term_sums[key] = term_sums.get(key, 0.0) + value.item() * len(target)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                total_loss += loss.item() * len(target)
                correct += (logits.argmax(1) == target).sum().item()
                seen += len(target)
                progress.update(
                    task, advance=1, loss=total_loss / seen, acc=correct / seen,
                    ips=seen / (time.perf_counter() - start),
                )  # fmt: skip
        elapsed = time.perf_counter() - start
        val_logits = predict(
            self.model, self.data.val_x, self.transform, self.loop.eval_batch_size, self.device
        )
        val_loss = F.cross_entropy(val_logits, self.data.val_y).item()
        val_acc = (val_logits.argmax(1) == self.data.val_y).float().mean().item()
        return {
            "epoch": epoch,
            "train_loss": total_loss / seen,
            **{f"train_{k}": v / seen for k, v in term_sums.items()},
            "train_acc": correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "train_lr": self.optimizer.param_groups[0]["lr"],
            "train_ips": seen / elapsed,
            "train_seconds": elapsed,
        }

    def _save(self, epoch: int, row: dict, improved: bool) -> None:
        meta = {**self.meta, "epoch": epoch, "metrics": row}
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": epoch,
            "best": self.best,
        }
        if self.extra is not None:
            state["extra"] = self.extra.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if improved:
            save_checkpoint(self.folder, "best", self.saved, meta)
        save_checkpoint(self.folder, "last", self.saved, meta, state)


def _run_defining(config: dict | None) -> dict:
    """The parts of a config that change the result (not where output goes or which device runs it)."""
    config = {k: v for k, v in (config or {}).items() if k != "output"}
    if isinstance(config.get("train"), dict):
        config["train"] = {k: v for k, v in config["train"].items() if k not in ("device", "threads")}
    return config


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return ""

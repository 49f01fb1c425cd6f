"""The training loop shared by students and teachers, in one process or several (torchrun).

One epoch is a seeded permutation of the in-memory training tensors; the order and the
augmentation of epoch e depend only on (seed, e), and the global RNG state is saved with
every checkpoint, so `--resume` ends with the same weights as an uninterrupted run. Under
torchrun each process takes its shard of every global batch, with the random choices drawn
for the whole batch, so the steps do not depend on the number of processes.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from mtkd.console import make_progress, say
from mtkd.data.base import Images
from mtkd.data.batches import batch_indices, epoch_generator, fetched, row_slices
from mtkd.device import resident, resolve_precision, use_channels_last
from mtkd.dist import SINGLE, Dist, wrap
from mtkd.engine.checkpoint import load_train_state, load_weights, read_meta, save_checkpoint
from mtkd.engine.config import LoopConfig, OptimConfig, OutputConfig, ScheduleConfig, config_difference
from mtkd.engine.logger import MetricsLog
from mtkd.engine.readings import Readings, read_interval
from mtkd.engine.signals import StopRequests
from mtkd.errors import Interrupted, MtkdError
from mtkd.methods.base import Step


class Transform(Protocol):
    """Raw batch -> model input. `draw` makes the random choices of n rows (sliceable by rows, or
    None); the transform applies them while training and is deterministic without them."""

    def draw(self, n: int, gen: torch.Generator) -> Any: ...

    def __call__(self, x: torch.Tensor, drawn: Any = None) -> torch.Tensor: ...


class Identity:
    """The transform of inputs used as they are (a probe's precomputed features)."""

    def draw(self, n: int, gen: torch.Generator) -> None:
        return None

    def __call__(self, x: torch.Tensor, drawn: Any = None) -> torch.Tensor:
        return x


class StepLoss(Protocol):
    """The loss of one training step. `draw` makes the step's random choices for the global batch;
    the call gets the task's trainable module (wrapped by DDP under torchrun), this process's rows
    of the batch and where training is."""

    def draw(self, n: int, gen: torch.Generator) -> Any: ...

    def __call__(
        self, net: nn.Module, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, drawn: Any, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def mixed(x: torch.Tensor, y: torch.Tensor, drawn: Any, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch and its targets after the step's mixup / cutmix, if one was drawn: soft targets
    then (cross-entropy takes class probabilities); else as they are."""
    mix = getattr(drawn, "mix", None)
    return mix.apply(x, y, classes) if mix is not None else (x, y)


class CrossEntropy:
    """The plain step: the model on the transformed batch, cross-entropy on the labels (mixed with
    the batch's images when the step drew a mixup or cutmix)."""

    def __init__(self, transform: Transform, label_smoothing: float, classes: int = 0):
        self.transform, self.label_smoothing, self.classes = transform, label_smoothing, classes

    def draw(self, n: int, gen: torch.Generator) -> Any:
        return self.transform.draw(n, gen)

    def __call__(
        self, net: nn.Module, index: torch.Tensor, x: torch.Tensor, y: torch.Tensor, drawn: Any, step: Step
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, target = mixed(x, y, drawn, self.classes)
        logits = net(self.transform(x, drawn))
        return logits, {"ce": F.cross_entropy(logits, target, label_smoothing=self.label_smoothing)}


@dataclass
class FitData:
    """What a run trains and validates on: uint8 images (in memory or a store's), or precomputed features."""

    train_x: Images
    train_y: torch.Tensor
    val_x: Images
    val_y: torch.Tensor


def make_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    for g in groups:  # a group's lr: its own, or the optimizer's x its lr_scale
        g.setdefault("lr", cfg.lr * g.pop("lr_scale", 1.0))
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
    model: nn.Module, x: Images, transform: Transform, batch_size: int, device: torch.device,
    place: Dist = SINGLE,
) -> torch.Tensor:  # fmt: skip
    """Logits for every row of x, in order (under torchrun each process computes its share)."""
    was_training = model.training
    model.eval()
    part = place.shard(len(x))
    slices = row_slices(part.start, part.stop, batch_size)
    # kept on the device and copied back once: a copy per batch would wait for each batch
    out = [
        model(transform(batch.to(device, non_blocking=True))).float()
        for batch in fetched(x, slices, pin=device.type == "cuda")
    ]
    model.train(was_training)
    return place.gather_rows(torch.cat(out).cpu() if out else torch.empty(0))


@dataclass
class Task:
    """What one run trains, as one handle (after timm's `TrainingTask`, timm/task/task.py): the
    module the optimizer trains and DDP wraps, the step loss that calls it, the model validation
    and testing run (on the run's inputs through `transform`), the module whose weights are the
    checkpoint, and the trained parts kept only in the resume state.

    A student alone: student, cross-entropy, student, student. A student with teachers: the
    student and the methods' parts as one module (`StudentStep`), the transfer loss, the student,
    the student, the methods. A probe: the teacher's head on cached features, ..., the whole
    teacher. Fine-tuning: the teacher throughout.
    """

    trainable: nn.Module
    loss: StepLoss
    evaluated: nn.Module
    transform: Transform
    saved: nn.Module
    groups: list[dict]
    extra: nn.Module | None = None
    may_skip_parameters: bool = False  # some trained parts get no gradient in some steps (DDP's find_unused)


def classifier_task(
    model: nn.Module, transform: Transform, groups: list[dict], label_smoothing: float,
    saved: nn.Module | None = None, classes: int = 0,
) -> Task:  # fmt: skip
    """A model trained with cross-entropy on the labels (a student alone, a teacher's fit); `classes`
    is needed only when the transform draws mixup / cutmix."""
    return Task(
        model, CrossEntropy(transform, label_smoothing, classes), model, transform,
        saved if saved is not None else model, groups,
    )  # fmt: skip


def restore_cuda_rng(states: list[torch.Tensor]) -> None:
    """The CUDA generators' states saved with a checkpoint, for the devices this machine has (a
    run saved on a machine with more GPUs resumes on one with fewer)."""
    for device, state in enumerate(states[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, device)


class Trainer:
    """Fit a Task on `data` with checkpoints in `out.dir`.

    meta: what every checkpoint JSON records besides metrics (kind, model spec, data, config).
    """

    def __init__(
        self,
        task: Task,
        data: FitData,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        loop: LoopConfig,
        out: OutputConfig,
        meta: dict,
        device: torch.device,
        place: Dist = SINGLE,
    ):
        self.task = task
        # The training split on the device when it fits there (validation is read in batches).
        self.data = replace(
            data, train_x=resident(data.train_x, device), train_y=resident(data.train_y, device)
        )
        self.pin = device.type == "cuda"  # batches gathered on the host go through pinned memory
        self.loop, self.schedule, self.out, self.meta, self.device = loop, schedule, out, meta, device
        self.place = place
        self.read_every = read_interval(device, out.log_every)
        self.precision = resolve_precision(loop.precision, device)
        self.channels_last = use_channels_last(loop.channels_last, device)
        if self.channels_last:
            task.trainable.to(memory_format=torch.channels_last)
        self.net = wrap(task.trainable, place, device, loop.sync_bn, task.may_skip_parameters)
        if loop.compile:
            self.net = torch.compile(self.net)
        self.folder = Path(out.dir)
        n = len(data.train_y)
        if place.active and loop.batch_size % place.world:
            raise MtkdError(
                f"train.batch_size {loop.batch_size} is the global batch and must divide evenly "
                f"among the {place.world} processes"
            )
        self.drop_last = n > loop.batch_size
        self.steps_per_epoch = n // loop.batch_size if self.drop_last else 1
        total = self.steps_per_epoch * schedule.epochs
        warmup = round(schedule.warmup_epochs * self.steps_per_epoch)
        self.optimizer = make_optimizer(task.groups, optim)
        floor = schedule.min_lr / optim.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, total, warmup, floor)
        )
        self.start_epoch = 0
        self.best = {"epoch": 0, "val_acc": -1.0}
        self.partial: dict | None = None  # an epoch stopped by a signal, to finish first on resume
        self.last_row: dict = {}
        self.stop = StopRequests()
        self.resumed = False

    def predict(self, x: Images) -> torch.Tensor:
        """The evaluated model's logits for every row of x (inputs as the run holds them)."""
        t = self.task
        return predict(t.evaluated, x, t.transform, self.loop.eval_batch_size, self.device, self.place)

    def resume(self) -> None:
        """Continue from `last` in the output folder, which must come from the same config."""
        meta = read_meta(self.folder / "last.json")
        diff = config_difference(meta.get("config"), self.meta.get("config"))
        if diff:
            raise MtkdError(f"cannot resume {self.folder}: its config differs at '{diff}'")
        self.task.saved.load_state_dict(load_weights(meta))
        state = load_train_state(meta)
        if self.task.extra is not None:
            self.task.extra.load_state_dict(state["extra"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.precision.scaler is not None and "scaler" in state:
            self.precision.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and "cuda_rng" in state:
            restore_cuda_rng(state["cuda_rng"])
        self.start_epoch, self.best = int(state["epoch"]), dict(state["best"])
        self.partial, self.last_row = state.get("in_epoch"), dict(meta.get("metrics") or {})
        self.resumed = True
        where = f"epoch {self.start_epoch}" + (f", step {self.partial['step']}" if self.partial else "")
        say(f"resuming {self.folder} after {where}")

    def fit(self) -> dict:
        """Train to the last epoch; returns the final row of metrics and the best epoch.

        SIGINT or SIGTERM stops it between two steps after saving `last` (with the position in
        the epoch), and raises Interrupted; `--resume` then continues from that very step.
        """
        if not self.resumed and (self.folder / "last.json").is_file():
            raise MtkdError(
                f"{self.folder} already holds a run: resume it (Trainer.resume) or write elsewhere"
            )
        log = (
            MetricsLog(self.folder, self.out, self.start_epoch, self.meta.get("config"), self.steps_per_epoch)
            if self.place.main
            else None
        )
        row: dict = {}
        try:
            with self.stop:
                for epoch in range(self.start_epoch + 1, self.schedule.epochs + 1):
                    row, steps = self._epoch(epoch)
                    val_acc = row["val_acc"]
                    improved = val_acc > self.best["val_acc"]
                    if improved:
                        self.best = {"epoch": epoch, "val_acc": val_acc}
                    if log is not None:
                        log.log(row, steps)
                    self.last_row = row
                    self._save(epoch, row, improved)
                    say(
                        f"epoch {epoch}/{self.schedule.epochs}  loss {row['train_loss']:.4f}  "
                        f"train acc {row['train_acc']:.4f}  val acc {val_acc:.4f}  {row['train_ips']:.0f} img/s"
                        + ("  *best" if improved else "")
                    )
        finally:
            if log is not None:
                log.close()
        return {"last": row, "best": self.best}

    def _stop_requested(self, step: int) -> bool:
        """Has a process been asked to stop? Processes agree every 16 steps (one small all-reduce)."""
        if not self.place.active:
            return bool(self.stop.signum)
        return step % 16 == 0 and self.place.sum([float(self.stop.signum)])[0] > 0

    def _epoch(self, epoch: int) -> tuple[dict, list[dict]]:
        self.net.train()
        if self.task.extra is not None:
            self.task.extra.train()
        gen = epoch_generator(self.loop.seed, epoch)
        x, y = self.data.train_x, self.data.train_y
        place, every = self.place, self.out.log_every
        # This process's sums, carried over when a signal stopped the epoch part way.
        part = self.partial if self.partial and self.partial["epoch"] == epoch else None
        self.partial = None
        sums = dict(part["sums"]) if part else {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        term_sums: dict[str, float] = dict(part["terms"]) if part else {}
        steps: list[dict] = list(part["steps"]) if part else []
        skip, before = (part["step"], part["seconds"]) if part else (0, 0.0)
        seen_before = sums["seen"]
        start = time.perf_counter()
        progress = make_progress(self.out.progress and place.main)
        # The epoch's order first (the generator's first draw), then each step's random choices.
        order = list(batch_indices(len(y), self.loop.batch_size, True, gen, self.drop_last))
        mine = [index[place.shard(len(index))] for index in order]
        batches = fetched(x, mine[skip:], pin=self.pin)
        readings = Readings()  # steps not yet read by the host (see engine.readings)
        with progress, contextlib.closing(batches):
            task = progress.add_task(
                f"epoch {epoch}", total=self.steps_per_epoch, completed=skip, loss=0.0, acc=0.0, ips=0.0
            )
            for step, index in enumerate(order):
                # The random choices are drawn for the global batch, then each process takes its rows.
                drawn = self.task.loss.draw(len(index), gen)
                if step < skip:
                    continue  # done before the interruption: only the generator moves on
                if drawn is not None:
                    drawn = drawn[place.shard(len(index))]
                index = mine[step]
                terms, logits, target = self._step(epoch, step, index, next(batches), y, drawn)
                readings.add(step, terms, logits, target)
                stopping = self._stop_requested(step + 1)
                if len(readings) >= self.read_every or stopping or step + 1 == len(order):
                    for done in readings.read(epoch, self.folder):
                        for key, value in done.terms.items():
                            term_sums[key] = term_sums.get(key, 0.0) + value * done.rows
                        sums["loss"] += sum(done.terms.values()) * done.rows
                        sums["correct"] += done.correct
                        sums["seen"] += done.rows
                        global_step = (epoch - 1) * self.steps_per_epoch + done.step + 1
                        if every and (global_step - 1) % every == 0:
                            steps.append(self._step_row(global_step, epoch, done.terms, done.rows))
                    progress.update(
                        task, completed=step + 1, loss=sums["loss"] / sums["seen"],
                        acc=sums["correct"] / sums["seen"],
                        ips=(sums["seen"] - seen_before) * place.world / (time.perf_counter() - start),
                    )  # fmt: skip
                if stopping:
                    self._save_interrupted(
                        {"epoch": epoch, "step": step + 1, "sums": sums, "terms": term_sums, "steps": steps,
                         "seconds": before + time.perf_counter() - start}
                    )  # fmt: skip
        elapsed = before + time.perf_counter() - start
        keys = list(term_sums)
        loss_sum, correct, seen, *reduced = place.sum(
            [sums["loss"], sums["correct"], sums["seen"], *term_sums.values()]
        )
        val_logits = self.predict(self.data.val_x)
        row = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            **{f"train_{k}": v / seen for k, v in zip(keys, reduced, strict=True)},
            "train_acc": correct / seen,
            "val_loss": F.cross_entropy(val_logits, self.data.val_y).item(),
            "val_acc": (val_logits.argmax(1) == self.data.val_y).float().mean().item(),
            "train_lr": self.optimizer.param_groups[0]["lr"],
            "train_ips": seen / elapsed,
            "train_seconds": elapsed,
        }
        return row, steps

    def _step(
        self, epoch: int, step: int, index: torch.Tensor, rows: torch.Tensor, y: torch.Tensor, drawn: Any
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """One optimisation step on this process's rows `index` (their inputs `rows`): (loss terms,
        logits, labels), all on the device: nothing here waits for it (but fp16's loss scale)."""
        batch = rows.to(self.device, non_blocking=True)
        if self.channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        target = y[index.to(y.device, non_blocking=True)].to(self.device, non_blocking=True)
        with self.precision.autocast(self.device):
            where = Step(epoch, step, self.steps_per_epoch, self.schedule.epochs, index)
            logits, terms = self.task.loss(self.net, index, batch, target, drawn, where)
            loss = torch.stack([t.float() for t in terms.values()]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.precision.scaler
        stepped = True
        if scaler is not None:
            scaler.scale(loss).backward()
            before = scaler.get_scale()
            scaler.step(self.optimizer)
            scaler.update()
            # a step fp16's scaler skipped (an inf or nan gradient; the scale went down) did not
            # train: the learning-rate schedule waits for the next one that does
            stepped = scaler.get_scale() >= before
        else:
            loss.backward()
            self.optimizer.step()
        if stepped:
            self.scheduler.step()
        return terms, logits, target

    def _step_row(self, global_step: int, epoch: int, values: dict[str, float], rows: int) -> dict:
        """One step's loss terms, averaged over the global batch (all processes)."""
        sums = self.place.sum([rows, *(v * rows for v in values.values())])
        terms = {k: v / sums[0] for k, v in zip(values, sums[1:], strict=True)}
        return {"step": global_step, "epoch": epoch, "loss": sum(terms.values()), **terms}

    def _train_state(self, completed: int) -> dict:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "epoch": completed,
            "best": self.best,
        }
        if self.task.extra is not None:
            state["extra"] = self.task.extra.state_dict()
        if self.precision.scaler is not None:
            state["scaler"] = self.precision.scaler.state_dict()
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _save(self, epoch: int, row: dict, improved: bool) -> None:
        """Rank 0 writes the checkpoints; every process waits until they are on disk."""
        if self.place.main:
            meta = {**self.meta, "epoch": epoch, "metrics": row}
            if improved:
                save_checkpoint(self.folder, "best", self.task.saved, meta)
            save_checkpoint(self.folder, "last", self.task.saved, meta, self._train_state(epoch))
        self.place.barrier()

    def _save_interrupted(self, position: dict) -> None:
        """Save `last` in the middle of an epoch (where a signal stopped it) and stop."""
        epoch, step = position["epoch"], position["step"]
        if self.place.main:
            state = {**self._train_state(epoch - 1), "in_epoch": position}
            meta = {**self.meta, "epoch": epoch - 1, "metrics": self.last_row,
                    "interrupted": {"epoch": epoch, "step": step}}  # fmt: skip
            save_checkpoint(self.folder, "last", self.task.saved, meta, state)
        self.place.barrier()
        name = self.stop.name or "a signal to another process"
        raise Interrupted(
            f"stopped by {name} at epoch {epoch}, step {step}/{self.steps_per_epoch}; saved "
            f"{self.folder / 'last.json'}: continue with --resume",
            self.stop.signum or 15,
        )

"""`mtkd train` and `mtkd teacher fit`: a run from its config to its checkpoints and summary."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.markup import escape
from torch import nn

from mtkd.console import Milestones, make_progress, say
from mtkd.data import Dataset, as_dataset, load_dataset
from mtkd.data.base import ImageSet, channel_stats, stratified_split
from mtkd.data.batches import Normalize, row_slices
from mtkd.data.catalog import plugin_named
from mtkd.data.convert import PYTHON_DATA
from mtkd.device import (
    compute_threads,
    default_threads,
    pick_device,
    precision_name,
    resolve_precision,
)
from mtkd.dist import Dist, setup
from mtkd.engine.builders import ImageTransform, augment_of, load_teachers, student_groups
from mtkd.engine.checkpoint import finish_saves, load_weights, read_meta, save_checkpoint
from mtkd.engine.config import DataConfig, TeacherFitConfig, TeacherRef, TrainConfig, settled, to_yaml
from mtkd.engine.trackers import check_trackers
from mtkd.engine.trainer import FitData, Identity, Trainer, classifier_task
from mtkd.engine.transfer import build_methods, prepare_teachers, transfer_task
from mtkd.errors import MtkdError
from mtkd.io import atomic_write, file_lock, write_json
from mtkd.models.adapters import OutputsView
from mtkd.models.cost import count_macs, count_params
from mtkd.models.zoo import create_student, registered_name
from mtkd.teachers.cache import TeacherImages, clean_features, teacher_images
from mtkd.teachers.nets import TeacherNet, TeacherSpec

C = TypeVar("C", TrainConfig, TeacherFitConfig)


def open_dataset(cfg: DataConfig) -> Dataset:
    """The dataset a config names; with `train_size`, a stratified part of its training split."""
    dataset = load_dataset(
        cfg.name, cfg.data_dir, cfg.val_fraction, cfg.split_seed, cfg.download, cfg.image_size, cfg.in_memory
    )
    if cfg.train_size is not None:
        n = len(dataset.train.labels)
        if cfg.train_size >= n:
            raise MtkdError(
                f"data.train_size {cfg.train_size} is not below the {n} training images of {cfg.name}"
            )
        _, keep = stratified_split(dataset.train.labels.numpy(), cfg.train_size, cfg.split_seed)
        dataset.train = dataset.train.subset(keep)
        dataset.mean, dataset.std = channel_stats(dataset.train.images)  # of the images it trains on
    return dataset


def check_folder(folder: Path, resume: bool) -> None:
    """Refuse to overwrite a run; with resume, require one."""
    if folder.is_dir():
        finish_saves(folder)
    has_run = (folder / "last.json").is_file()
    if resume and not has_run:
        raise MtkdError(f"nothing to resume in {folder} (no last.json)")
    if not resume and has_run:
        raise MtkdError(
            f"{folder} already holds a run: pass --resume to continue it, or another --output.dir"
        )


def _hflip(setting: str, dataset: Dataset) -> bool:
    return dataset.hflip if setting == "auto" else setting == "on"


def _finish(
    trainer: Trainer, test_x: torch.Tensor, dataset: Dataset, meta: dict, result: dict, started: float
) -> dict:
    """Test accuracy of the final and the best-on-validation weights; written into best.json and summary.json.

    Evaluation goes through what the trainer trained on (images, or a probe's features), so a
    frozen backbone is not run again; `test_x` is the test split in that same form.
    """
    folder, model, extra = trainer.folder, trainer.task.saved, trainer.task.extra
    test, val = dataset.test, dataset.val

    def predicted(x: torch.Tensor) -> torch.Tensor:
        return trainer.predict(x).argmax(1)

    last_test = (predicted(test_x) == test.labels).float().mean().item()
    best_meta = read_meta(folder / "best.json")
    model.load_state_dict(load_weights(best_meta))
    best_val = (predicted(trainer.data.val_x) == val.labels).float().mean().item()
    test_pred = predicted(test_x)
    best_test = (test_pred == test.labels).float().mean().item()
    confusion = torch.zeros(dataset.num_classes, dataset.num_classes, dtype=torch.long)
    confusion.index_put_((test.labels, test_pred), torch.ones_like(test_pred), accumulate=True)
    c, h, w = dataset.channels, *dataset.image_size
    report = {
        "kind": meta["kind"],
        "name": meta["model"]["name"],
        "dataset": dataset.name,
        "params": count_params(model),
        "extra_train_params": count_params(extra) if extra is not None else 0,
        "macs": count_macs(model, (c, h, w)),
        "best_epoch": result["best"]["epoch"],
        "val_acc": best_val,
        "test_acc": best_test,
        "test_acc_last": last_test,
        "epochs": trainer.schedule.epochs,
        "seconds": round(time.time() - started, 1),
    }
    if trainer.place.main:
        save_checkpoint(folder, "best", model, {**best_meta_clean(best_meta), "report": report})
        # The test confusion matrix of the best-on-validation weights (rows: true class, columns: predicted).
        write_json(
            folder / "summary.json",
            {
                **report,
                "val_count": int(val.labels.numel()),
                "classes": dataset.classes,
                "test_confusion": confusion.tolist(),
            },
        )
    trainer.place.barrier()
    say(
        f"[bold]{report['name']}[/bold] on {dataset.name}: test acc {best_test:.4f} (best val epoch "
        f"{report['best_epoch']}), {last_test:.4f} (last epoch); {report['params']:,} params, "
        f"{report['macs']:,} MACs; saved in {folder}"
    )
    return report


def best_meta_clean(meta: dict) -> dict:
    return {
        k: v
        for k, v in meta.items()
        if k not in ("files", "versions", "git_commit", "saved_at", "_path", "content_sha256")
    }


def _claim(cfg: TrainConfig | TeacherFitConfig, resume: bool, place: Dist, stack: ExitStack) -> None:
    """Lock the run folder for this run (a second run into it stops) and write the config.

    Done once the run's inputs are known to be good, so a failed start leaves no folder behind.
    """
    if not place.main:
        return
    folder = Path(cfg.output.dir)
    stack.enter_context(file_lock(folder / ".lock", f"run folder {folder}", wait=False))
    if not resume:
        atomic_write(folder / "config.yaml", to_yaml(cfg))


def _saved_train(cfg: C, resume: bool, key: str) -> Any:
    """The `train.<key>` a resumed run was started with (None for a new run or an unset key)."""
    last = Path(cfg.output.dir) / "last.json"
    if not (resume and last.is_file()):
        return None
    return ((read_meta(last).get("config") or {}).get("train") or {}).get(key)


def settle_threads(cfg: C, resume: bool) -> C:
    """The config with the run's compute-thread count settled: as asked, else (on resume) the count
    the run was started with, else `default_threads()`. It is recorded with the run and restored on
    resume, since it decides the last bits of the results."""
    threads = settled(
        cfg.train.threads, _saved_train(cfg, resume, "threads") or None, default_threads,
        refuse=lambda saved: (
            f"cannot resume {cfg.output.dir}: it was trained with train.threads={saved} (the thread count "
            f"is part of a run's results); leave train.threads out, or set it to {saved}"
        ),
    )  # fmt: skip
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})


def settle_precision(cfg: C, resume: bool, device: torch.device) -> C:
    """The config with `train.precision: auto` settled to what it means on this device (bf16 or
    fp16 on a GPU, fp32 on the CPU) and recorded with the run; on resume, the precision the run
    was started with, whatever the device now: it decides the results, and fp16's loss-scaler
    state goes with it. One that this device cannot run is refused in one line."""
    saved = _saved_train(cfg, resume, "precision")
    saved = None if saved == "auto" else saved
    precision = settled(
        cfg.train.precision, saved, lambda: precision_name(cfg.train.precision, device), unset="auto",
        refuse=lambda saved: (
            f"cannot resume {cfg.output.dir}: it was trained with train.precision={saved} (the precision "
            f"is part of a run's results); leave train.precision out, or set it to {saved}"
        ),
    )  # fmt: skip
    if saved == "fp16" and device.type != "cuda":
        raise MtkdError(
            f"cannot resume {cfg.output.dir} on {device.type}: it was trained in fp16 on a GPU; resume it on one"
        )
    resolve_precision(precision, device)  # an impossible precision stops here, before any file
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": precision})})


def _where(device: torch.device, place: Dist) -> str:
    return f"{device} x {place.world} processes" if place.active else str(device)


def _start(cfg: C, resume: bool, data: Any = None) -> tuple[C, Dist, torch.device, Dataset]:
    """What every run does first: claim the output folder, pick the device (and join the other
    processes under torchrun), settle the precision, load the data (unless given from Python), seed."""
    folder = Path(cfg.output.dir)
    check_folder(folder, resume)
    place, device = setup(pick_device(cfg.train.device))
    cfg = settle_precision(cfg, resume, device)
    check_trackers(cfg.output)
    if data is None:
        dataset = open_dataset(cfg.data)
    else:  # given from Python: a Dataset, or torch Datasets split here as the config says
        dataset = as_dataset(data, cfg.data.name, cfg.data.val_fraction, cfg.data.split_seed)
        dataset.name = cfg.data.name
    torch.manual_seed(cfg.train.seed)
    place.barrier()  # every process has checked the folder before rank 0 writes into it
    return cfg, place, device, dataset


@dataclass
class Given:
    """What a run takes from Python instead of building from its config (mtkd.train)."""

    student: nn.Module | None = None
    teachers: list[str | TeacherRef | nn.Module] | None = None  # replaces transfer.teachers
    data: Any = None  # a Dataset, or what mtkd.data.as_dataset takes


@contextlib.contextmanager
def _nothing_left_on_failure(folder: Path, resume: bool) -> Iterator[None]:
    """A new run that fails before its first checkpoint (a tracker that cannot start, a module that
    raises at step 1, an interruption) takes away the folder it created: nothing to resume is left."""
    existed = folder.exists()
    try:
        yield
    except BaseException:
        if not (resume or existed) and os.environ.get("RANK", "0") == "0" and folder.is_dir() \
                and not (folder / "last.json").is_file() and not (folder / "last.json.new").is_file():  # fmt: skip
            shutil.rmtree(folder, ignore_errors=True)
        raise


def run_train(cfg: TrainConfig, resume: bool = False, given: Given | None = None) -> dict:
    """Train a student, alone or from teachers through transfer methods, and report its accuracies."""
    with _nothing_left_on_failure(Path(cfg.output.dir), resume), ExitStack() as stack:
        cfg = settle_threads(cfg, resume)
        stack.enter_context(compute_threads(cfg.train.threads))
        return _train(cfg, resume, stack, given or Given())


def _student(
    cfg: TrainConfig, given: Given, dataset: Dataset, device: torch.device
) -> tuple[nn.Module, OutputsView, int]:
    """(student on the device, how its outputs are read, its pooled feature width)."""
    built = None if cfg.model.name.startswith("python:") else create_student(
        cfg.model.name, dataset.num_classes, dataset.channels, cfg.model.pretrained
    )  # fmt: skip
    if given.student is not None and built is not None:
        _same_architecture(given.student, built, cfg.model.name)
    student = (given.student if given.student is not None else built).to(device)
    view = OutputsView(student, cfg.model.feature_layer)
    dim, outputs = view.shapes(dataset.channels, dataset.image_size, device)
    if outputs != dataset.num_classes:
        raise MtkdError(
            f"student {cfg.model.name} gives {outputs} logits and {dataset.name} has {dataset.num_classes} classes"
        )
    return student, view, dim


def _same_architecture(module: nn.Module, built: nn.Module, name: str) -> None:
    """A module given from Python under a student's name must be that architecture: its checkpoint
    is rebuilt by the name."""
    mine = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()))[0][0]
        raise MtkdError(
            f"the student module is not the architecture '{name}' builds (they differ at '{diff}'); "
            "leave out the model name to record it as a Python module"
        )


def _named(cfg: C, given: Given, dataset: Dataset) -> C:
    """The config with what was given from Python without a name recorded by the name of the
    registered student / plugin dataset that is the same thing, when there is one."""
    update = {}
    if (
        given.student is not None and cfg.model.name.startswith("python:")
        if isinstance(cfg, TrainConfig)
        else False
    ):
        name = registered_name(given.student, dataset.num_classes, dataset.channels)
        if name:
            update["model"] = cfg.model.model_copy(update={"name": name})
    if given.data is not None and cfg.data.name == PYTHON_DATA:
        name = plugin_named(dataset, cfg.data.val_fraction, cfg.data.split_seed)
        if name:
            dataset.name = name
            update["data"] = cfg.data.model_copy(update={"name": name})
    for key, section in update.items():
        say(
            f"the {'student' if key == 'model' else 'data'} given is registered as '{section.name}': recorded by that name"
        )
    return cfg.model_copy(update=update) if update else cfg


def _train(cfg: TrainConfig, resume: bool, stack: ExitStack, given: Given) -> dict:
    started = time.time()
    cfg, place, device, dataset = _start(cfg, resume, given.data)
    cfg = _named(cfg, given, dataset)
    student, view, dim = _student(cfg, given, dataset, device)
    teachers = load_teachers(
        given.teachers if given.teachers is not None else list(cfg.transfer.teachers), dataset, device
    )
    if given.teachers is not None:  # the config records what was given (modules by class and content)
        transfer = cfg.transfer.model_copy(update={"teachers": [t.recorded for t in teachers]})
        cfg = cfg.model_copy(update={"transfer": transfer})
    methods = build_methods(cfg, dim, teachers, dataset.num_classes).to(device)
    hflip = _hflip(cfg.train.hflip, dataset)
    normalize = Normalize(dataset.mean, dataset.std).to(device)
    if teachers:
        prepare_teachers(
            teachers, methods, dataset, cfg, hflip, device, place, student
        )  # caches found or built
        task = transfer_task(student, view, methods, teachers, dataset, normalize, cfg, hflip, device)
    else:
        transform = ImageTransform(normalize, augment_of(cfg.train, hflip, dataset.mean), dataset.image_size)
        groups = student_groups(student, cfg.model, [])
        task = classifier_task(
            student, transform, groups, cfg.train.label_smoothing, classes=dataset.num_classes
        )
    _claim(cfg, resume, place, stack)
    meta = {
        "kind": "student",
        "model": {
            "name": cfg.model.name,
            "feature_layer": cfg.model.feature_layer,
            "class": _class_path(student),
            "architecture": getattr(student, "mtkd_arch", None),
            "weights_source": getattr(student, "mtkd_weights", None),
        },
        "data": dataset.meta(),
        "config": cfg.model_dump(mode="json"),
    }
    data = FitData(dataset.train.images, dataset.train.labels, dataset.val.images, dataset.val.labels)
    say(
        f"training {cfg.model.name} ({count_params(student):,} params{_weights(student)}) on {dataset.name} ({escape(dataset.source)}), {_where(device, place)}"
    )
    if teachers:
        extra = sum(p.numel() for p in methods.parameters())
        say(f"teachers: {', '.join(t.name for t in teachers)}; methods: {', '.join(m.name for m in methods)} "
            f"({extra:,} extra training parameters, not part of the student)")  # fmt: skip
    trainer = Trainer(task, data, cfg.optim, cfg.schedule, cfg.train, cfg.output, meta, device, place)
    if resume:
        trainer.resume()
    try:
        result = trainer.fit()
        return _finish(trainer, dataset.test.images, dataset, meta, result, started)
    finally:
        view.remove()  # the student (a module of the caller's, perhaps) is left as it came, but trained


def _weights(student: nn.Module) -> str:
    source = getattr(student, "mtkd_weights", "random init")
    return "" if source == "random init" else f", pretrained: {source}"


def _class_path(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


@torch.inference_mode()
def _extract(
    teacher: TeacherNet, images: TeacherImages, batch_size: int, device: torch.device, label: str, place: Dist
) -> torch.Tensor:  # fmt: skip
    """The frozen backbone's feature map for every image, computed once (a probe with a flatten
    head; a gap head's pooled features come from `clean_features`), shared among processes."""
    teacher.eval()
    part = place.shard(len(images))
    n = part.stop - part.start
    say(f"{label}: {n} images through the frozen backbone, once")
    out = []
    progress = make_progress(True)
    with progress:
        task = progress.add_task(label, total=n, loss=0.0, acc=0.0, ips=0.0)
        start, done = time.perf_counter(), 0
        lines = Milestones(label, n)
        chunks = [torch.arange(s.start, s.stop) for s in row_slices(part.start, part.stop, batch_size)]
        for batch in images.batches(chunks):
            fmap = teacher.forward_features(batch.to(device, non_blocking=True).float() / 255.0)
            out.append(fmap.cpu())
            done += len(batch)
            ips = done / (time.perf_counter() - start)
            progress.update(task, advance=len(batch), ips=ips)
            lines.update(done, ips)
    return place.gather_rows(torch.cat(out))


def run_teacher_fit(cfg: TeacherFitConfig, resume: bool = False, data: Any = None) -> dict:
    """Adapt a pretrained teacher to a dataset: a new head on a frozen backbone (probe) or fine-tuning."""
    with _nothing_left_on_failure(Path(cfg.output.dir), resume), ExitStack() as stack:
        cfg = settle_threads(cfg, resume)
        stack.enter_context(compute_threads(cfg.train.threads))
        return _teacher_fit(cfg, resume, stack, data)


def _teacher_fit(cfg: TeacherFitConfig, resume: bool, stack: ExitStack, data: Any) -> dict:
    started = time.time()
    cfg, place, device, dataset = _start(cfg, resume, data)
    cfg = _named(cfg, Given(data=data), dataset)
    t = cfg.teacher
    spec = TeacherSpec(
        t.name, t.pretrained, t.input_size, t.head, list(t.head_hidden), t.dropout, dataset.num_classes
    )
    teacher = TeacherNet(spec).to(device)
    _claim(cfg, resume, place, stack)
    spec.input_size = teacher.input_size
    meta = {
        "kind": "teacher",
        "model": {
            **spec.to_dict(),
            "weights_source": teacher.weights_source,
            "mode": cfg.adapt.mode,
            # A probe's frozen backbone reads an image folder's files at its input size; fine-tuning
            # trains on the run's images (upscaled by the teacher), and so is shown them later too.
            "inputs": "files"
            if cfg.adapt.mode == "probe"
            and dataset.train.files is not None
            and teacher.input_size > max(dataset.image_size)
            else "images",
        },
        "data": dataset.meta(),
        "config": cfg.model_dump(mode="json"),
    }
    say(
        f"adapting {t.name} ({teacher.weights_source}, input {teacher.input_size}px, head {t.head}, "
        f"mode {cfg.adapt.mode}) on {dataset.name} ({escape(dataset.source)}), {_where(device, place)}"
    )
    augment = augment_of(cfg.train, _hflip(cfg.train.hflip, dataset), dataset.mean)
    image_tf = ImageTransform(None, augment, dataset.image_size)
    for p in teacher.body.parameters():
        p.requires_grad_(cfg.adapt.mode == "finetune")
    if cfg.adapt.mode == "probe":
        # The backbone is frozen: its features are computed once and the head trains on them.
        def shown(part: ImageSet) -> TeacherImages:
            return teacher_images(part, teacher.input_size if meta["model"]["inputs"] == "files" else None)

        def features(split: str) -> torch.Tensor:
            part, label = dataset.split(split), f"{t.name} features ({split})"
            if t.head == "gap":  # cached under the backbone: shared by seeds and by students' view 0
                return clean_features(teacher, shown(part), device, label, place)
            return _extract(teacher, shown(part), cfg.adapt.feature_batch_size, device, label, place)

        data = FitData(features("train"), dataset.train.labels, features("val"), dataset.val.labels)
        groups = [{"params": list(teacher.head.parameters())}]
        task = classifier_task(teacher.head, Identity(), groups, cfg.train.label_smoothing, saved=teacher)
    else:
        for prefix in cfg.adapt.freeze:
            matched = [
                p for n, p in teacher.backbone_parameters() if n == prefix or n.startswith(prefix + ".")
            ]
            if not matched:
                first = teacher.backbone_parameters()[0][0]
                raise MtkdError(
                    f"adapt.freeze: no parameters under '{prefix}' in {t.name} (names look like '{first}')"
                )
            for p in matched:
                p.requires_grad_(False)
        data = FitData(dataset.train.images, dataset.train.labels, dataset.val.images, dataset.val.labels)
        backbone = [p for p in teacher.body.parameters() if p.requires_grad]
        groups = [{"params": list(teacher.head.parameters())}]
        if backbone:
            groups.append({"params": backbone, "lr": cfg.optim.lr * cfg.adapt.backbone_lr_scale})
        task = classifier_task(
            teacher, image_tf, groups, cfg.train.label_smoothing, classes=dataset.num_classes
        )
    trainer = Trainer(task, data, cfg.optim, cfg.schedule, cfg.train, cfg.output, meta, device, place)
    if resume:
        trainer.resume()
    result = trainer.fit()
    test_x = features("test") if cfg.adapt.mode == "probe" else dataset.test.images
    return _finish(trainer, test_x, dataset, meta, result, started)

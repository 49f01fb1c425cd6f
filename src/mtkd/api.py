"""mtkd from Python: `fit_teacher`, `train`, `study`, `evaluate`, `load_student`, `export`.

Keyword arguments mirror the config: a section as a mapping (`optim={"lr": 0.1}`), a dotted
key (`**{"optim.lr": 0.1}`), an option whose name is unique in the config (`views=2`,
`warmup_epochs=0`) or one of the CLI's short names (`epochs`, `lr`, `batch_size`, `seed`,
`out`, ...); `config=` takes a YAML path or a mapping of the same shape, applied first. What
the config cannot hold is given as objects: a student or teacher `nn.Module`, and data as an
mtkd Dataset (`mtkd.data.from_tensors`, `from_torch`) or a (train, test) pair of torch
Datasets. Problems raise `MtkdError` with the CLI's one-line messages.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mtkd.data import Dataset
from mtkd.data.convert import PYTHON_DATA
from mtkd.deploy.hf import is_exported, load_folder
from mtkd.engine.builders import Normalised, load_deployable
from mtkd.engine.checkpoint import read_summary
from mtkd.engine.config import (
    SHORT_KEYS,
    Section,
    TeacherFitConfig,
    TrainConfig,
    TransferConfig,
    build_config,
    leaf_fields,
)
from mtkd.engine.evaluate import evaluate_checkpoint
from mtkd.engine.run import Given, run_teacher_fit, run_train
from mtkd.errors import MtkdError
from mtkd.errors import check_type as _check


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and its summary. A Run is a path (os.PathLike): give a teacher's
    Run to `train(teachers=[...])`, or any Run to `evaluate` and `load_student`."""

    folder: Path
    summary: dict

    @property
    def test_acc(self) -> float:
        """Test accuracy of the weights with the best validation accuracy."""
        return float(self.summary["test_acc"])

    @property
    def val_acc(self) -> float:
        return float(self.summary["val_acc"])

    @property
    def best_epoch(self) -> int:
        return int(self.summary["best_epoch"])

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return str(self.folder)


def _overrides(model: type[Section], command: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments -> dotted config keys (see the module docstring)."""
    leaves = leaf_fields(model)
    by_leaf: dict[str, list[str]] = {}
    for key in leaves:
        by_leaf.setdefault(key.rsplit(".", 1)[-1], []).append(key)
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in SHORT_KEYS[command]:
            out[SHORT_KEYS[command][key]] = value
        elif key in model.model_fields and isinstance(value, Mapping):
            for inner, v in value.items():
                out[f"{key}.{inner}"] = v
        elif key in leaves:
            out[key] = value
        elif len(by_leaf.get(key, [])) == 1:
            out[by_leaf[key][0]] = value
        else:
            known = sorted(set(SHORT_KEYS[command]) | {k for k, v in by_leaf.items() if len(v) == 1})
            hint = (
                f"ambiguous: say {' or '.join(by_leaf[key])}"
                if by_leaf.get(key)
                else f"known: {', '.join(known)}"
            )
            raise MtkdError(f"unknown option '{key}' ({hint}; or a section mapping, or a dotted key)")
    return out


def _config(
    model: type[Section], command: str, config: str | os.PathLike | Mapping | None, options: dict
) -> Any:
    path = config if isinstance(config, (str, os.PathLike)) else None
    mapping = dict(config) if isinstance(config, Mapping) else None
    return build_config(model, path, _overrides(model, command, options), mapping=mapping)


def _data(data: Any, options: dict) -> Any:
    """A name or data section goes into the config; data objects are returned to be given to the run
    (converted there, with the config's data.val_fraction and data.split_seed)."""
    if data is None:
        return None
    if isinstance(data, (str, os.PathLike)):
        options["dataset"] = str(data)
        return None
    if isinstance(data, Mapping) and "train" not in data:
        options["data"] = dict(data)
        return None
    name = options.pop("dataset", None) or (options.get("data") or {}).get("name")
    options["dataset"] = str(name or (data.name if isinstance(data, Dataset) else PYTHON_DATA))
    return data


_CONFIG = (str, os.PathLike, Mapping, type(None))
_CONFIG_TEXT = "a YAML path or a mapping"


def _device(device: Any) -> torch.device:
    """A device name ('auto', 'cpu', 'cuda', 'cuda:1', 'mps') or torch.device, checked in one line."""
    from mtkd.device import pick_device

    _check(device, (str, torch.device), "device", "a device name such as 'cpu' or 'cuda' (or a torch.device)")
    return pick_device(device)


def _run(folder: Path) -> Run:
    return Run(folder, read_summary(folder / "summary.json"))


def fit_teacher(
    teacher: str | Mapping | None = None, *, data: Any = None, config: str | os.PathLike | Mapping | None = None,
    resume: bool = False, **options: Any,
) -> Run:  # fmt: skip
    """Adapt an ImageNet teacher to a dataset (`mtkd teacher fit`): a new head on the frozen
    backbone (`mode="probe"`, default) or fine-tuning. `teacher`: a model name or a teacher section
    (`{"name": ..., "input_size": 96}`); options as the config (`input_size=96`, `epochs=30`, `out=`)."""
    _check(teacher, (str, Mapping, type(None)), "fit_teacher's teacher",
           "a model name or a teacher mapping ({name:, input_size:}); a module teacher is given to "
           "train(teachers=[module]) as it is")  # fmt: skip
    _check(config, _CONFIG, "config", _CONFIG_TEXT)
    _check(resume, (bool,), "resume", "True or False")
    options = dict(options)
    if isinstance(teacher, str):
        options["teacher"] = teacher
    elif isinstance(teacher, Mapping):
        options.update({f"teacher.{k}": v for k, v in teacher.items()})
    dataset = _data(data, options)
    cfg = _config(TeacherFitConfig, "teacher fit", config, options)
    run_teacher_fit(cfg, resume=resume, data=dataset)
    return _run(Path(cfg.output.dir))


def _teacher_entries(teachers: Sequence[Any]) -> tuple[list[Any], bool]:
    """(entries, whether any is a module) with Runs and paths as strings and mappings as TeacherRefs."""
    entries: list[Any] = []
    for t in teachers:
        if isinstance(t, nn.Module):
            entries.append(t)
        elif isinstance(t, (str, os.PathLike)):
            entries.append(os.fspath(t))
        elif isinstance(t, Mapping):
            entries.append(dict(t))
        else:
            raise MtkdError(
                f"a teacher is a run folder, a model name, a {{name:, input_size:}} mapping or an nn.Module, "
                f"not {type(t).__name__}"
            )
    return entries, any(isinstance(e, nn.Module) for e in entries)


def train(
    student: str | nn.Module | None = None, *, teachers: Sequence[Any] | None = None, data: Any = None,
    methods: Sequence[str | Mapping] | None = None, config: str | os.PathLike | Mapping | None = None,
    resume: bool = False, **options: Any,
) -> Run:  # fmt: skip
    """Train a student, alone or from teachers (`mtkd train`).

    student: a model name (mtkd, registered/plugin or timm) or any nn.Module (its pooled features
    are read at its last linear layer's input, or at `feature_layer=`); teachers: run folders or
    Runs of fit_teacher, ImageNet model or plugin teacher names, `{name:, input_size:}` mappings,
    or nn.Modules (see mtkd.ModuleTeacher); methods: names or `{name:, option: ...}`.
    """
    _check(student, (str, nn.Module, type(None)), "the student", "a model name or an nn.Module")
    _check(config, _CONFIG, "config", _CONFIG_TEXT)
    _check(resume, (bool,), "resume", "True or False")
    if teachers is not None and (isinstance(teachers, (str, os.PathLike, Mapping, nn.Module))):
        teachers = [teachers]  # one teacher given alone
    _check(teachers, (list, tuple, type(None)), "teachers", "a list of teachers")
    if isinstance(methods, (str, Mapping)):
        methods = [methods]
    _check(methods, (list, tuple, type(None)), "methods", "a list of method names or mappings")
    options = dict(options)
    module = None
    if isinstance(student, nn.Module):
        module = student
        named = options.get("model") or getattr(student, "mtkd_name", None)
        options["model"] = named or f"python:{type(student).__name__}"
    elif student is not None:
        options["model"] = student
    dataset = _data(data, options)
    if methods is not None:
        options["methods"] = [dict(m) if isinstance(m, Mapping) else m for m in methods]
    given_teachers = None
    if teachers is not None:
        entries, has_modules = _teacher_entries(teachers)
        if has_modules:  # the modules are given to the run; the rest are checked as the config would
            named = [e for e in entries if not isinstance(e, nn.Module)]
            checked = iter(build_config(TransferConfig, overrides={"teachers": named}).teachers)
            given_teachers = [e if isinstance(e, nn.Module) else next(checked) for e in entries]
            options["teachers"] = []
        else:
            options["teachers"] = entries
    cfg = _config(TrainConfig, "train", config, options)
    run_train(cfg, resume=resume, given=Given(module, given_teachers, dataset))
    return _run(Path(cfg.output.dir))


def study(
    config: str | os.PathLike | Mapping, *, jobs: int = 1, report_only: bool = False, ray: str | None = None,
    **options: Any,
) -> dict:  # fmt: skip
    """Run (or finish) a study and write its report (`mtkd study`); returns the report's answers.
    `config`: a study YAML or a mapping of the same shape; options are study keys (`output=`, `seeds=`).
    `ray`: run the jobs as Ray tasks on the cluster at that address ('' starts a local Ray instance)."""
    from mtkd.study.runner import study_from

    return study_from(config, jobs=jobs, report_only=report_only, ray=ray, **options)


def evaluate(
    run: str | os.PathLike, *, split: str = "test", data: Any = None, model: nn.Module | None = None,
    device: str = "auto",
) -> dict:  # fmt: skip
    """Top-1, top-5, per-class accuracy and confusion matrix of a run (`mtkd evaluate`) on a split
    of its dataset, or of `data` (a name, or data from Python). `model`: the architecture of a
    student that was given from Python as a module."""
    _check(run, (str, os.PathLike), "the run to evaluate", "a run folder or checkpoint path (or a Run)")
    _check(split, (str,), "split", "'train', 'val' or 'test'")
    _check(model, (nn.Module, type(None)), "model", "an nn.Module of the student's architecture")
    if split not in ("train", "val", "test"):
        raise MtkdError(f"split must be 'train', 'val' or 'test', got '{split}'")
    if isinstance(data, os.PathLike):
        data = os.fspath(data)
    if device != "auto":
        device = str(_device(device))
    return evaluate_checkpoint(os.fspath(run), split, device, data=data, model=model)


def load_student(
    run: str | os.PathLike, *, model: nn.Module | None = None, device: str | torch.device = "cpu"
) -> Normalised:
    """A run's model (its best-on-validation weights), or an exported folder's
    (`local-dir:DIR`, from `mtkd export RUN --format hf` or a study's `model/`), ready for
    inference: it takes float images in [0, 1], [N, C, H, W], normalises them itself and returns
    logits; in eval mode. `classes` and `image_size` say what it was trained on. `model`: the
    architecture of a student that was given from Python as a module (its weights are loaded into it)."""
    _check(
        run, (str, os.PathLike), "the run to load", "a run folder, checkpoint path, local-dir:DIR (or a Run)"
    )
    _check(model, (nn.Module, type(None)), "model", "an nn.Module of the student's architecture (not a name)")
    if is_exported(os.fspath(run)):
        return load_folder(os.fspath(run), _device(device))[0]
    net, meta = load_deployable(os.fspath(run), _device(device), model)
    net.classes = list(meta["data"]["classes"])
    net.image_size = tuple(meta["data"]["image_size"])
    return net


def export(
    run: str | os.PathLike, out: str | os.PathLike, *, format: str = "hf", push: str | None = None,
    calibration: int = 512,
) -> dict:  # fmt: skip
    """`mtkd export`: a finished run as a timm / Hugging Face folder (`format="hf"`, uploaded to
    the Hub repository `push` when given), an ONNX file (`"onnx"`), or an ONNX file and its int8
    twin calibrated on `calibration` training images (`"onnx-int8"`, with both files' test accuracy
    and latency). Returns what was written and measured."""
    from mtkd.deploy import hf, hub, onnx

    _check(run, (str, os.PathLike), "the run to export", "a run folder or checkpoint path (or a Run)")
    _check(out, (str, os.PathLike), "out", "a folder (hf) or .onnx file path")
    if format not in ("hf", "onnx", "onnx-int8"):
        raise MtkdError(f"format must be 'hf', 'onnx' or 'onnx-int8', got {format!r}")
    if push is not None and format != "hf":
        raise MtkdError("push uploads an exported folder: use it with format='hf'")
    if format == "hf":
        if push is not None:
            hub.check_repo(push)
        info = hf.export_folder(os.fspath(run), out)
        if push is not None:
            info["pushed"] = hub.push_folder(out, push)
        return info
    if format == "onnx":
        return onnx.export_onnx(os.fspath(run), out)
    return onnx.export_int8(os.fspath(run), out, calibration=calibration)

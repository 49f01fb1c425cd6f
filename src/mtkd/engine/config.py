"""Run configuration: pydantic models, YAML files, dotted overrides and their one-line errors.

A config is built in layers: the command's defaults, then a YAML file, then `--section.key`
flags and `--set section.key=value` overrides. Every layer is checked against the schema;
an unknown key or a bad value raises MtkdError naming the key and what is allowed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mtkd.errors import MtkdError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class DataConfig(Section):
    name: str = Field("digits", description="dataset name (mtkd datasets) or folder:PATH")
    data_dir: Path | None = Field(None, description="folder with the dataset's files")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="part of train held out for validation")
    split_seed: int = Field(0, ge=0, description="seed of the validation split")
    train_size: int | None = Field(
        None, ge=2, description="keep this many training images (stratified, seeded by split_seed); "
        "validation and test stay whole",
    )  # fmt: skip
    download: bool = Field(True, description="download torchvision datasets when missing")
    image_size: int | None = Field(None, ge=4, le=1024, description="resize image-folder datasets to this")
    in_memory: Literal["auto"] | bool = Field(
        "auto",
        description="hold an image folder's store in memory (true), read it from disk batch by batch "
        "(false), or in memory when it takes under a quarter of the memory available (auto)",
    )


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0, le=10)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0, lt=1)


class ScheduleConfig(Section):
    epochs: int = Field(30, ge=1, le=100_000)
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, then cosine decay")
    min_lr: float = Field(0.0, ge=0)


class AugmentConfig(Section):
    """Augmentation beyond train.crop_padding and train.hflip (timm / torchvision's pipeline, on batches)."""

    crop: Literal["pad", "resized"] = Field(
        "pad", description="pad: random crop after train.crop_padding zeros; resized: random-resized-crop"
    )
    scale: tuple[float, float] = Field((0.08, 1.0), description="resized: range of the crop's area fraction")
    ratio: tuple[float, float] = Field(
        (3 / 4, 4 / 3), description="resized: range of the crop's aspect ratio"
    )
    auto: Literal["none", "randaugment", "trivialaugment"] = Field(
        "none", description="RandAugment or TrivialAugment-Wide (torchvision's operations and magnitudes)"
    )
    ops: int = Field(2, ge=1, le=8, description="randaugment: operations per image")
    magnitude: int = Field(9, ge=0, le=30, description="randaugment: magnitude bin of 31")
    jitter: float = Field(
        0.0, ge=0, lt=1, description="colour jitter: brightness, contrast, saturation x U(1-j, 1+j)"
    )
    erasing: float = Field(0.0, ge=0, le=1, description="random erasing: probability per image")
    mixup: float = Field(0.0, ge=0, le=10, description="mixup: Beta(alpha, alpha) per batch; 0: off")
    cutmix: float = Field(0.0, ge=0, le=10, description="cutmix: Beta(alpha, alpha) per batch; 0: off")

    @field_validator("scale", "ratio")
    @classmethod
    def _range(cls, v: tuple[float, float], info: Any) -> tuple[float, float]:
        lo, hi = v
        top = 1.0 if info.field_name == "scale" else 100.0
        if not 0 < lo <= hi <= top:
            raise ValueError(f"must be two numbers 0 < low <= high <= {top:g}")
        return v


class LoopConfig(Section):
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    crop_padding: int = Field(2, ge=0, le=64, description="random crop after this much zero padding")
    hflip: Literal["auto", "on", "off"] = Field("auto", description="auto: where the dataset allows it")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(
        None, ge=1,
        description="CPU compute threads, part of the run's results (default: all cores; recorded, kept on resume)",
    )  # fmt: skip
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 (or fp16 with loss scaling) on CUDA, fp32 on the CPU"
    )
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="auto: on for CUDA")
    compile: bool = Field(False, description="torch.compile the trained module")
    sync_bn: bool = Field(
        False,
        description="under torchrun: batch norm over the global batch (the steps of one process; slower)",
    )

    @field_validator("hflip", "channels_last", mode="before")
    @classmethod
    def _on_off(cls, v: object) -> object:
        """YAML reads on/off as booleans: take them back as the words."""
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class OutputConfig(Section):
    dir: Path = Path("runs/train")
    tensorboard: bool = True
    progress: bool = True
    log_every: int = Field(
        50, ge=0, description="steps between step-loss rows (steps.csv, TensorBoard); 0: none"
    )
    trackers: list[Literal["wandb", "mlflow"]] = Field(
        default_factory=list, description="experiment trackers besides TensorBoard: wandb, mlflow"
    )
    project: str = Field("mtkd", description="the W&B project / MLflow experiment runs are logged under")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="offline: no network; wandb sync later"
    )
    mlflow_uri: str | None = Field(
        None, description="MLflow tracking URI (default: a file store in <run>/mlruns)"
    )


class StudentConfig(Section):
    name: str = Field(
        "cnn_small", description="mtkd student (mtkd models), a registered or plugin student, or a timm model"
    )
    feature_layer: str | None = Field(
        None,
        description="module whose input is the pooled features (default: timm's forward_head, else the last nn.Linear)",
    )
    pretrained: str = Field(
        "none",
        description="none (random init) | auto | offline | hub | path to a weights file: where the student's "
        "first weights come from (timm students; an hf-hub:ORG/NAME student takes the Hub's)",
    )  # fmt: skip
    freeze: list[str] = Field(default_factory=list, description="module path prefixes kept frozen")
    backbone_lr_scale: float = Field(
        1.0, ge=0, le=1, description="lr of every layer but the classifier = lr * this"
    )


class TeacherConfig(Section):
    name: str = Field("mobilenet_v2", description="torchvision or timm ImageNet model (mtkd models)")
    pretrained: str = Field("auto", description="auto | offline | hub | none | path to a weights file")
    input_size: int | None = Field(None, ge=16, le=1024, description="teacher input size (default: its own)")
    head: Literal["gap", "flatten"] = Field(
        "gap", description="global average pooling + linear, or flatten + FC"
    )
    head_hidden: list[int] = Field(default_factory=list, description="hidden FC widths of the flatten head")
    dropout: float = Field(0.0, ge=0, lt=1)

    @field_validator("head_hidden")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("hidden widths must be >= 1")
        return v


class AdaptConfig(Section):
    mode: Literal["probe", "finetune"] = Field(
        "probe", description="probe: frozen backbone; finetune: all layers"
    )
    freeze: list[str] = Field(default_factory=list, description="finetune: module path prefixes kept frozen")
    backbone_lr_scale: float = Field(0.1, ge=0, le=1, description="finetune: backbone lr = lr * this")
    feature_batch_size: int = Field(128, ge=1, description="probe: batch size of the one feature pass")


class TeacherRef(Section):
    """A teacher in `transfer.teachers` with options: an ImageNet model (or plugin teacher) by name."""

    name: str = Field(description="adapted teacher run folder, ImageNet model or plugin teacher")
    pretrained: str = Field("auto", description="ImageNet teachers: auto | offline | hub | path to weights")
    input_size: int | None = Field(
        None, ge=16, le=1024, description="the size images are resized to for this teacher (default: its own)"
    )


class TransferConfig(Section):
    teachers: list[str | TeacherRef] = Field(
        default_factory=list,
        description="adapted teachers (run folders of mtkd teacher fit), ImageNet model or plugin teacher "
        "names, or {name:, input_size:, pretrained:}",
    )  # fmt: skip
    methods: list[str | dict[str, Any]] = Field(
        default_factory=lambda: ["none"], description="methods by name, or {name: ..., option: ...} mappings"
    )
    ce_weight: float = Field(1.0, ge=0, description="weight of the cross-entropy on the labels")
    teacher_mode: Literal["cached", "online"] = Field(
        "cached", description="cached: teachers' outputs computed once"
    )
    views: int = Field(
        4, ge=1, le=64, description="cached augmented views per image (view 0 is the clean image)"
    )
    view_seed: int = Field(0, ge=0)
    cache_dtype: Literal["float16", "float32"] = "float16"

    @field_validator("teachers", mode="before")
    @classmethod
    def _teacher_mappings(cls, v: Any) -> Any:
        """A mapping is a TeacherRef: its own error, not the string branch's 'must be a valid string'."""
        if not isinstance(v, list):
            return v
        out = []
        for i, item in enumerate(v):
            if isinstance(item, dict):
                try:
                    item = TeacherRef.model_validate(item)
                except ValidationError as err:
                    e = err.errors()[0]
                    key = ".".join(map(str, e["loc"]))
                    msg = e["msg"].replace("Input should be", "must be").replace("Value error, ", "")
                    if e["type"] == "extra_forbidden":
                        msg = f"unknown key (allowed: {', '.join(TeacherRef.model_fields)})"
                    raise ValueError(f"teacher {i} ({item.get('name', '?')}): {key}: {msg}") from None
            out.append(item)
        return out

    def method_specs(self) -> list[tuple[str, dict[str, Any]]]:
        specs = []
        for m in self.methods:
            if isinstance(m, str):
                specs.append((m, {}))
            else:
                if "name" not in m:
                    raise MtkdError(f"transfer.methods: each mapping needs a 'name', got {m}")
                specs.append((str(m["name"]), {k: v for k, v in m.items() if k != "name"}))
        return specs


class TrainConfig(Section):
    """`mtkd train`: a student on a dataset, alone or learning from teachers."""

    data: DataConfig = DataConfig()
    model: StudentConfig = StudentConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: LoopConfig = LoopConfig()
    transfer: TransferConfig = TransferConfig()
    output: OutputConfig = OutputConfig()


class TeacherFitConfig(Section):
    """`mtkd teacher fit`: adapt an ImageNet teacher to a dataset."""

    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    adapt: AdaptConfig = AdaptConfig()
    optim: OptimConfig = OptimConfig(name="adamw", lr=1e-3, weight_decay=1e-4)
    schedule: ScheduleConfig = ScheduleConfig(epochs=30, warmup_epochs=0)
    train: LoopConfig = LoopConfig()
    output: OutputConfig = OutputConfig(dir=Path("runs/teacher"))


# Short names of common options: CLI flags (--epochs, --data-dir) and keyword arguments of the
# Python API (epochs=, data_dir=).
SHORT_KEYS = {
    "train": {
        "dataset": "data.name", "data_dir": "data.data_dir", "model": "model.name",
        "epochs": "schedule.epochs", "lr": "optim.lr", "batch_size": "train.batch_size",
        "seed": "train.seed", "device": "train.device", "out": "output.dir",
        "teachers": "transfer.teachers", "methods": "transfer.methods", "teacher_mode": "transfer.teacher_mode",
    },
    "teacher fit": {
        "dataset": "data.name", "data_dir": "data.data_dir", "teacher": "teacher.name",
        "mode": "adapt.mode", "head": "teacher.head", "input_size": "teacher.input_size",
        "epochs": "schedule.epochs", "lr": "optim.lr", "batch_size": "train.batch_size",
        "seed": "train.seed", "device": "train.device", "out": "output.dir",
    },
}  # fmt: skip


def leaf_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted path -> pydantic FieldInfo for every leaf option of a config model."""
    leaves = {}
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            leaves.update(leaf_fields(ann, f"{prefix}{name}."))
        else:
            leaves[f"{prefix}{name}"] = info
    return leaves


def _allowed_keys(model: type[BaseModel], parts: list[str]) -> list[str]:
    for part in parts:
        ann = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_error(model: type[BaseModel], err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return f"unknown config key '{key}' (allowed here: {', '.join(allowed)})"
    given = first.get("input")
    msg = first["msg"]
    msg = msg.replace("Input should be", "must be").replace("Value error, ", "")
    return f"bad value for '{key}': {msg} (got {given!r})"


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def merge_trees(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_trees(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it (numbers, booleans, lists, null)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MtkdError(f"config file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MtkdError(
            f"config file {path} is not UTF-8 text (byte {exc.start} cannot be decoded): is it a YAML file?"
        ) from None
    except OSError as exc:
        raise MtkdError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise MtkdError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise MtkdError(f"config file {path} must hold a mapping of sections, not {type(data).__name__}")
    return data


def build_config(
    model: type[Section],
    yaml_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: dict | None = None,
    mapping: dict | None = None,
) -> Section:
    """Defaults (or `base`), then the YAML file (or a mapping of the same shape), then dotted
    overrides, validated once at the end."""
    tree = base if base is not None else model().model_dump(mode="json")
    if yaml_path is not None:
        tree = merge_trees(tree, read_yaml(yaml_path))
    if mapping is not None:
        tree = merge_trees(tree, mapping)
    for key, value in (overrides or {}).items():
        set_dotted(tree, key, value)
    for item in sets or []:
        if "=" not in item:
            raise MtkdError(f"--set takes key=value, got '{item}'")
        key, text = item.split("=", 1)
        if key.strip() not in leaf_fields(model):
            parts = key.strip().split(".")
            allowed = _allowed_keys(model, parts[:-1]) or list(model.model_fields)
            raise MtkdError(f"unknown config key '{key.strip()}' (allowed here: {', '.join(allowed)})")
        set_dotted(tree, key.strip(), parse_value(text))
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise MtkdError(format_error(model, err)) from None


V = TypeVar("V")


def settled(
    asked: V | None, saved: V | None, default: Callable[[], V], unset: Any = None,
    refuse: Callable[[V], str] | None = None,
) -> V:  # fmt: skip
    """A setting that decides a run's bits, settled once: as asked, else as saved with the run or
    study being continued, else `default()`. `unset` is the value that means "not asked" (None,
    "auto"). With `refuse`, asking for another value than the saved one is an error whose line
    `refuse(saved)` gives; without, what is asked wins."""
    asked = None if asked == unset else asked
    if refuse is not None and asked is not None and saved is not None and asked != saved:
        raise MtkdError(refuse(saved))
    if asked is not None:
        return asked
    return saved if saved is not None else default()


def to_yaml(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_difference(old: dict | None, new: dict | None) -> str:
    """The first difference between two run configs in what changes the result ('' when none).

    Where the output goes and which device runs it do not count; neither do options the old
    config does not have (added by a later mtkd version, at their defaults then) or left unset
    (runs of mtkd versions that did not record their thread count, or settle `precision: auto`:
    a run records what auto meant on its device, and a study's `auto` accepts it).
    """
    old, new = _run_defining(old), _run_defining(new)
    trains = [side["train"] for side in (old, new) if isinstance(side.get("train"), dict)]
    if any(train.get("precision") == "auto" for train in trains):
        for train in trains:
            train.pop("precision", None)
    return _first_difference(old, new)


def _run_defining(config: dict | None) -> dict:
    config = {k: v for k, v in (config or {}).items() if k != "output"}
    if isinstance(config.get("data"), dict):  # the same bits whether the images are in memory or not
        config["data"] = {k: v for k, v in config["data"].items() if k != "in_memory"}
    if isinstance(config.get("train"), dict):
        ignored = ("device", "channels_last", "compile")
        config["train"] = {
            k: v
            for k, v in config["train"].items()
            if k not in ignored and not (k == "threads" and v is None)
        }
    return config


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        if key not in old:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return ""

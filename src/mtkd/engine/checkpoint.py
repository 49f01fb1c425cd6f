"""Checkpoints: weights as safetensors, a JSON of what they are, and a resume state.

`<tag>.safetensors` holds the model's tensors; `<tag>.json` records the model spec, the
data it was trained on, the config, versions, git commit, metrics and the SHA-256 of every
file of the checkpoint. `<tag>.state.pt` (optimizer, scheduler, RNG) is read with
`weights_only=True`: loading never runs code from a file.

A checkpoint of several files is replaced as one, wherever a kill lands: each new file is
written complete as `<name>.new`, then `<tag>.json.new` records them, then they are renamed
over the old ones, the JSON last. A `<tag>.json.new` found later (the process died while
renaming) means every new file is complete, so the renaming is finished before the
checkpoint is read; `.new` files without it are an unfinished save and are never read.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from mtkd.console import say
from mtkd.errors import MtkdError
from mtkd.io import atomic_path, fsync_dir, git_commit, read_json, sha256_file, write_json
from mtkd.version import __version__


def versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "mtkd": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    folder: Path, tag: str, model: nn.Module, meta: dict[str, Any], train_state: dict | None = None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    weights = _pending(folder / f"{tag}.safetensors")
    with atomic_path(weights) as tmp:
        try:
            save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(tmp))
        except SafetensorError as exc:  # safetensors reports I/O failures (a full disk) this way
            raise OSError(str(exc)) from None
    files["weights"] = _entry(weights)
    if train_state is not None:
        state_path = _pending(folder / f"{tag}.state.pt")
        with atomic_path(state_path) as tmp:
            torch.save(train_state, tmp)
        files["state"] = _entry(state_path)
    record = {
        **meta,
        "files": files,
        "versions": versions(),
        "git_commit": git_commit(),
        "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    record["content_sha256"] = content_hash(record)
    write_json(_pending(folder / f"{tag}.json"), record)
    _commit(folder, tag)


def _pending(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def _entry(pending: Path) -> dict:
    return {
        "name": pending.name.removesuffix(".new"),
        "bytes": pending.stat().st_size,
        "sha256": sha256_file(pending),
    }


def _commit(folder: Path, tag: str) -> None:
    """Rename a recorded save's `.new` files over the checkpoint, its JSON last (idempotent: a
    reader may finish the renaming of a process that died, even while that process is alive)."""
    record = _pending(folder / f"{tag}.json")
    try:
        names = [entry["name"] for entry in read_json(record)["files"].values()]
    except (FileNotFoundError, MtkdError, KeyError, TypeError, AttributeError):
        return
    for name in [*names, f"{tag}.json"]:
        with contextlib.suppress(FileNotFoundError):
            os.replace(_pending(folder / name), folder / name)
    fsync_dir(folder)


def finish_saves(folder: Path) -> None:
    """Complete the checkpoints whose saving was cut off while their files were being renamed."""
    for record in folder.glob("*.json.new"):
        _commit(folder, record.name.removesuffix(".json.new"))


def resolve_checkpoint(path: str | Path) -> Path:
    """The JSON of a checkpoint given a run folder (its best), a .json or a .safetensors path."""
    path = Path(path)
    finish_saves(path if path.is_dir() else path.parent)
    if path.is_dir():
        for tag in ("best", "last"):
            if (path / f"{tag}.json").is_file():
                return path / f"{tag}.json"
        raise MtkdError(f"no checkpoint (best.json or last.json) in {path}")
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise MtkdError(f"checkpoint not found: {path}")
    return path


def content_hash(record: dict) -> str:
    """SHA-256 of a checkpoint record as JSON (sorted keys), without its own hash."""
    body = {k: v for k, v in record.items() if k not in ("content_sha256", "_path")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class _File(_Loose):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # a file beside the JSON, never a path
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Files(_Loose):
    weights: _File
    state: _File | None = None


class _Data(_Loose):
    name: str
    classes: list[str] = Field(min_length=2)
    channels: Literal[1, 3]
    image_size: tuple[int, int]
    mean: list[float]
    std: list[float]

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 1:
            raise ValueError(f"must be positive, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _stats(self) -> _Data:
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std must have one value per channel ({self.channels})")
        if not all(s > 0 for s in self.std) or len(set(self.classes)) != len(self.classes):
            raise ValueError("std must be positive and class names distinct")
        return self


class _Model(_Loose):
    name: str = Field(min_length=1)
    num_classes: int | None = Field(None, ge=2)


class _Meta(_Loose):
    kind: Literal["student", "teacher"]
    model: _Model
    data: _Data
    config: dict
    files: _Files


def check_meta(meta: Any, where: str) -> dict:
    """A checkpoint record as read, checked before anything uses it: its own content hash (an
    edit by hand is refused), then the shape of every entry mtkd reads. One line on a problem."""
    if not isinstance(meta, dict):
        raise MtkdError(f"{where} is not an mtkd checkpoint (not a JSON object)")
    if "content_sha256" in meta and meta["content_sha256"] != content_hash(meta):
        raise MtkdError(
            f"{where} was altered after it was saved (its content hash does not match): refusing it"
        )
    try:
        _Meta.model_validate(meta)
    except ValidationError as err:
        raise MtkdError(f"{where} is not a valid mtkd checkpoint: {_first_problem(err)}") from None
    if meta["model"].get("num_classes") not in (None, len(meta["data"]["classes"])):
        raise MtkdError(
            f"{where} is not a valid mtkd checkpoint: model.num_classes differs from data.classes"
        )
    return meta


class _Summary(_Loose):
    kind: Literal["student", "teacher"]
    name: str
    dataset: str
    params: int = Field(ge=0)
    macs: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    val_acc: float = Field(ge=0, le=1)
    test_acc: float = Field(ge=0, le=1)
    test_acc_last: float = Field(ge=0, le=1)
    epochs: int = Field(ge=1)
    seconds: float = Field(ge=0)
    extra_train_params: int = Field(0, ge=0)
    val_count: int | None = Field(None, ge=0)
    classes: list[str] = []


def read_summary(path: str | Path, default: Any = ...) -> Any:
    """A finished run's summary.json, checked (keys, types, ranges) before it is used. A damaged
    or hand-edited one: one line naming it; with `default` (a study, which finishes the run again
    to rebuild it), `default` when absent or damaged."""
    lenient = default is not ...
    summary = read_json(path, default=default) if lenient else read_json(path)
    if lenient and summary is default:
        return default
    try:
        _Summary.model_validate(summary)
    except ValidationError as err:
        if lenient:
            say(f"{path} is damaged; rebuilding it")
            return default
        raise MtkdError(
            f"{path} is damaged: {_first_problem(err)}; delete that run folder to run it again"
        ) from None
    return summary


def _first_problem(err: ValidationError) -> str:
    """pydantic's first complaint as "'key.path' what is wrong"."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(the file)"
    return f"'{key}' {first['msg'].lower()}"


def read_meta(path: str | Path) -> dict:
    json_path = resolve_checkpoint(path)
    meta = check_meta(read_json(json_path), str(json_path))  # a damaged file: one line naming it
    meta["_path"] = str(json_path)
    return meta


def _verified(folder: Path, entry: dict) -> Path:
    path = folder / entry["name"]
    if not path.is_file():
        raise MtkdError(f"checkpoint file missing: {path}")
    if "bytes" in entry and path.stat().st_size != entry["bytes"]:
        raise MtkdError(
            f"checkpoint file is truncated ({path.stat().st_size} of {entry['bytes']} bytes): {path}"
        )
    if sha256_file(path) != entry["sha256"]:
        raise MtkdError(f"checkpoint file is corrupt or truncated (hash mismatch): {path}")
    return path


def load_weights(meta: dict) -> dict[str, torch.Tensor]:
    folder = Path(meta["_path"]).parent
    path = _verified(folder, meta["files"]["weights"])
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MtkdError(f"cannot read checkpoint weights {path}: {exc}") from None


def load_train_state(meta: dict) -> dict:
    folder = Path(meta["_path"]).parent
    if "state" not in meta["files"]:
        raise MtkdError(f"{meta['_path']} has no training state to resume from")
    path = _verified(folder, meta["files"]["state"])
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling refusals and corrupt files alike
        raise MtkdError(f"cannot read training state {path}: {str(exc).splitlines()[0]}") from None

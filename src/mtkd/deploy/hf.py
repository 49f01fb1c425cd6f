"""A trained student as a timm / Hugging Face folder: config.json, model.safetensors, README.md.

The layout is timm's (`timm.create_model("local-dir:DIR", pretrained=True)` and, once pushed,
`hf-hub:ORG/NAME`): `architecture`, `num_classes`, `label_names`, `model_args` (the input
channels) and a `pretrained_cfg` whose input size, mean, std and interpolation say how images
are prepared (the run's own: its dataset's statistics, bilinear resizing, no crop). The weights
are the student's state_dict under its own key names. An `mtkd` key adds what mtkd needs to
build students that timm does not know (mtkd's own, plugins): `mtkd.load_student("local-dir:DIR")`
reads either kind.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from mtkd.deploy.card import model_card
from mtkd.deploy.latency import median_ms
from mtkd.engine.builders import Normalised, load_model
from mtkd.engine.checkpoint import read_meta, read_summary
from mtkd.errors import MtkdError
from mtkd.io import atomic_folder
from mtkd.models.adapters import OutputsView
from mtkd.models.cost import count_macs, count_params
from mtkd.models.pretrained import load_strict, read_state_dict
from mtkd.models.zoo import create_student
from mtkd.version import __version__

LOCAL_DIR = "local-dir:"
FILES = ("config.json", "model.safetensors", "README.md")


def finished_run(checkpoint: str | os.PathLike) -> tuple[dict, dict]:
    """(checkpoint metadata, summary) of a finished student run, or one line saying why not."""
    meta = read_meta(checkpoint)
    folder = Path(meta["_path"]).parent
    if not (folder / "summary.json").is_file():
        raise MtkdError(
            f"{folder}: the run has not finished (no summary.json): finish it (--resume) before exporting it"
        )
    return meta, read_summary(folder / "summary.json")


def is_exported(path: str) -> bool:
    """Whether `path` names an exported folder (local-dir:DIR, or a folder with config.json that
    is not a run folder) rather than a run or a checkpoint."""
    if path.startswith(LOCAL_DIR):
        return True
    folder = Path(path)
    return folder.is_dir() and (folder / "config.json").is_file() and not (folder / "best.json").exists()


def is_export(folder: Path) -> bool:
    """Whether a folder is one this module wrote (so a new export may replace it)."""
    try:
        return "mtkd" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def _architecture(meta: dict, model: nn.Module) -> tuple[str, str]:
    """(timm architecture or mtkd student name, library) of a checkpoint's student."""
    name = meta["model"]["name"]
    if name.startswith("python:"):
        raise MtkdError(
            "a student given from Python as a module cannot be exported as a folder (its architecture has no "
            "name to rebuild it by): train it by a registered name (a mtkd.students plugin), or use --format onnx"
        )
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return str(cfg["architecture"]), "timm"
    return name, "mtkd"


def hf_config(meta: dict, model: nn.Module) -> dict:
    """config.json in timm's layout, with mtkd's own key."""
    data = meta["data"]
    arch, library = _architecture(meta, model)
    c, (h, w) = data["channels"], data["image_size"]
    source_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    pretrained_cfg = {k: source_cfg[k] for k in ("first_conv", "classifier", "license") if k in source_cfg}
    pretrained_cfg |= {
        "input_size": [c, h, w], "fixed_input_size": False, "interpolation": "bilinear",
        "crop_pct": 1.0, "crop_mode": "center", "mean": list(data["mean"]), "std": list(data["std"]),
        "num_classes": len(data["classes"]),
    }  # fmt: skip
    view = OutputsView(model, meta["model"].get("feature_layer"))
    try:
        features, _ = view.shapes(c, (h, w), torch.device("cpu"))
    finally:
        view.remove()
    return {
        "architecture": arch,
        "num_classes": len(data["classes"]),
        "num_features": features,
        "label_names": list(data["classes"]),
        "model_args": {"in_chans": c},
        "pretrained_cfg": pretrained_cfg,
        "mtkd": {
            "version": __version__,
            "library": library,
            "student": meta["model"]["name"],
            "feature_layer": meta["model"].get("feature_layer"),
            "dataset": data.get("name"),
            "image_size": [h, w],
            "channels": c,
        },  # fmt: skip
    }


def run_facts(meta: dict, summary: dict, model: nn.Module) -> dict[str, Any]:
    """What the card says of a run: data, teachers, methods, accuracy, cost, how it was made."""
    cfg = meta["config"]
    data = meta["data"]
    c, (h, w) = data["channels"], data["image_size"]
    x = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        latency = median_ms(lambda: model(x), repeats=30, threads=1)
    return {
        "student": meta["model"]["name"],
        "weights_source": meta["model"].get("weights_source") or "random init",
        "dataset": cfg["data"]["name"], "classes": list(data["classes"]), "image_size": [h, w], "channels": c,
        "train_images": data.get("sizes", {}).get("train"), "test_images": data.get("sizes", {}).get("test"),
        "teachers": [_teacher_name(t) for t in cfg.get("transfer", {}).get("teachers", [])],
        "methods": [m if isinstance(m, str) else m.get("name", "?") for m in cfg.get("transfer", {}).get("methods", [])],
        "epochs": summary["epochs"], "seed": cfg["train"]["seed"],
        "test_acc": summary["test_acc"], "val_acc": summary["val_acc"],
        "params": count_params(model), "macs": count_macs(model, (c, h, w)), "latency_ms": latency,
        "version": __version__, "command": "mtkd " + " ".join(sys.argv[1:]) if sys.argv[1:] else None,
    }  # fmt: skip


def _teacher_name(entry: Any) -> str:
    """A teacher entry as a person reads it: an adapted teacher's network, input size and mode."""
    name = entry.get("name", "?") if isinstance(entry, dict) else str(entry)
    path = Path(name)
    if path.exists():
        try:
            spec = read_meta(path)["model"]
            return f"{spec['name']} ({spec.get('mode', 'adapted')}, {spec.get('input_size')} px)"
        except MtkdError:
            return name
    return name


def export_folder(
    checkpoint: str | os.PathLike, out: str | os.PathLike, study: dict[str, Any] | None = None,
    also: Callable[[Path, str], dict | None] | None = None,
) -> dict:  # fmt: skip
    """Write a finished student run as a timm / Hugging Face folder (atomically: built beside
    `out`, then renamed). `study`: what a study measured of this configuration, for the card;
    `also(folder, checkpoint)`: writes more files into the folder being built (a study's ONNX
    files) and returns what the card should say of them (its `deployed` rows)."""
    meta, summary = finished_run(checkpoint)
    if meta["kind"] != "student":
        raise MtkdError(f"{meta['_path']} is a {meta['kind']} run: only students are exported as a folder")
    model, meta, _ = load_model(meta["_path"], torch.device("cpu"))
    config = hf_config(meta, model)
    facts = run_facts(meta, summary, model) | {"architecture": config["architecture"]}
    facts["library"] = config["mtkd"]["library"]
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_folder(out, is_export) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        facts["deployed"] = also(tmp, meta["_path"]) if also is not None else None
        (tmp / "README.md").write_text(model_card(facts, study))
    return {
        "path": str(out),
        "architecture": config["architecture"],
        "library": facts["library"],
        "facts": facts,
    }


def load_folder(folder: str | os.PathLike, device: torch.device) -> tuple[Normalised, dict]:
    """(the exported student, normalising its own input: float images in [0, 1], [N, C, H, W];
    its config.json) from a folder `export_folder` wrote, or any timm folder of the same layout."""
    folder = Path(os.fspath(folder).removeprefix(LOCAL_DIR))
    if not (folder / "config.json").is_file():
        raise MtkdError(
            f"{folder} is not an exported model (no config.json): write one with mtkd export RUN --format hf"
        )
    try:
        config = json.loads((folder / "config.json").read_text())
        own = config.get("mtkd", {})
        cfg = config["pretrained_cfg"]
        classes = list(config.get("label_names") or range(config["num_classes"]))
        channels = int(config.get("model_args", {}).get("in_chans", cfg["input_size"][0]))
        name = own.get("student") if own.get("library") == "mtkd" else f"timm:{config['architecture']}"
        mean, std, size = cfg["mean"], cfg["std"], tuple(cfg["input_size"][1:])
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise MtkdError(
            f"{folder}/config.json is not an exported model's config ({type(exc).__name__}: {exc})"
        ) from None
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MtkdError(f"{folder} has no model.safetensors: it is not a complete export")
    net = create_student(name, len(classes), channels)
    load_strict(net, read_state_dict(weights), str(weights))
    wrapped = Normalised(net, list(mean), list(std)).to(device).eval()
    wrapped.classes, wrapped.image_size = [str(c) for c in classes], size
    return wrapped, config

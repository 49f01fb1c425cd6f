"""`mtkd evaluate` and `mtkd predict`: accuracy reports and predictions from a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from mtkd.data import DATASETS, Dataset, as_dataset
from mtkd.data.images import image_to_tensor, open_image
from mtkd.device import pick_device
from mtkd.engine.builders import load_model
from mtkd.engine.config import DataConfig
from mtkd.engine.run import open_dataset
from mtkd.engine.trainer import predict
from mtkd.errors import MtkdError
from mtkd.io import write_json
from mtkd.teachers.cache import teacher_images


def classification_report(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    """Top-1, top-5, per-class accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    n = len(classes)
    top1 = MulticlassAccuracy(num_classes=n, average="micro")(logits, labels).item()
    top5 = MulticlassAccuracy(num_classes=n, top_k=min(5, n), average="micro")(logits, labels).item()
    per_class = MulticlassAccuracy(num_classes=n, average="none")(logits, labels).tolist()
    confusion = MulticlassConfusionMatrix(num_classes=n)(logits, labels).tolist()
    return {
        "top1": top1,
        "top5": top5,
        "per_class": dict(zip(classes, per_class, strict=True)),
        "confusion": confusion,
        "count": len(labels),
    }


def run_dataset(
    meta: dict, data: Any = None, flag: str = "--data NAME (CLI) or data= (mtkd.evaluate)"
) -> Dataset:
    """The dataset a checkpoint was trained on (found again by its name: a named dataset,
    folder:PATH or a dataset plugin), or `data` (a name, or data from Python as
    mtkd.data.as_dataset takes it, split as the run's config says), with the run's classes."""
    data_cfg = DataConfig(**meta["config"]["data"])
    if data is not None and not isinstance(data, str):
        dataset = as_dataset(data, data_cfg.name, data_cfg.val_fraction, data_cfg.split_seed)
    else:
        if data is not None:
            data_cfg = data_cfg.model_copy(update={"name": data})
        elif data_cfg.name not in DATASETS and not data_cfg.name.startswith("folder:"):
            raise MtkdError(
                f"{meta['_path']} was trained on data given from Python ('{data_cfg.name}'), which no dataset "
                f"plugin provides here: pass {flag}"
            )
        dataset = open_dataset(data_cfg)
    if dataset.classes != meta["data"]["classes"]:
        raise MtkdError(f"dataset {dataset.name} has other classes than the checkpoint was trained on")
    return dataset


def evaluate_checkpoint(
    path: str, split: str = "test", device: str = "auto", batch_size: int = 512, data: Any = None,
    model: nn.Module | None = None,
) -> dict:  # fmt: skip
    """Accuracy report of a checkpoint on a split of its own dataset (found again by its name: a
    named dataset, folder:PATH or a dataset plugin) or of `data` (a name, or data from Python as
    mtkd.data.as_dataset takes it, split as the run's config says);
    written next to the checkpoint as eval-<tag>-<split>.json. `model`: a module of the student's
    architecture, for a student that was given from Python."""
    dev = pick_device(device)
    model, meta, transform = load_model(path, dev, model)
    dataset = run_dataset(meta, data)
    images = dataset.split(split)
    x = images.images
    if meta["model"].get("inputs") == "files":  # a probe-adapted teacher reads the files, as it did
        x = teacher_images(images, meta["model"]["input_size"])
    logits = predict(model, x, transform, batch_size, dev)
    report = {
        "checkpoint": meta["_path"],
        "split": split,
        **classification_report(logits, images.labels, dataset.classes),
    }
    write_json(Path(meta["_path"]).parent / f"eval-{Path(meta['_path']).stem}-{split}.json", report)
    return report


def predict_files(path: str, files: list[str], device: str = "auto", top_k: int = 3) -> list[dict]:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise MtkdError(f"--top-k must be a whole number >= 1, got {top_k!r}")
    dev = pick_device(device)
    model, meta, transform = load_model(path, dev)
    data = meta["data"]
    at_input_size = meta["model"].get("inputs") == "files"  # a probe-fitted teacher, as it was fitted
    size = (meta["model"]["input_size"],) * 2 if at_input_size else tuple(data["image_size"])
    batch = torch.stack([image_to_tensor(open_image(f), data["channels"], size) for f in files]).to(dev)
    with torch.inference_mode():
        probs = model(transform(batch)).float().softmax(1).cpu()
    k = min(top_k, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    return [
        {"file": f, "top": [(data["classes"][i], float(v)) for v, i in zip(vals, idx, strict=True)]}
        for f, vals, idx in zip(files, values.tolist(), indices.tolist(), strict=True)
    ]

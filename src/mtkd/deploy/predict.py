"""`mtkd predict`: classify image files and folders (recursively) in batches, to CSV.

The model is a run folder or checkpoint, an exported folder (`mtkd export --format hf`, a
study's `model/`) or an ONNX file `mtkd export` wrote. Images are decoded as the dataset store
decodes them (mtkd._decode: grey or RGB, bilinear resize to the model's input size), in worker
processes, and a broken file is one line naming it before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mtkd.console import Milestones, make_progress, say
from mtkd.data.batches import row_slices
from mtkd.data.files import read_files
from mtkd.deploy.hf import is_exported, load_folder
from mtkd.device import pick_device
from mtkd.engine.builders import load_deployable
from mtkd.errors import MtkdError
from mtkd.io import atomic_write

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
ONNX_META = "mtkd"  # the ONNX metadata key export writes: classes, channels, image size

Classify = Callable[[torch.Tensor], torch.Tensor]  # uint8 [N, C, H, W] -> probabilities [N, classes]


def image_files(paths: list[str | os.PathLike]) -> list[str]:
    """Every image file named or under a named folder (recursively, sorted), in the order given."""
    found: list[str] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(
                str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise MtkdError(f"no image files under {path} ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found += inside
        elif path.is_file():
            found.append(str(path))
        else:
            raise MtkdError(f"image file or folder not found: {path}")
    return found


def onnx_model(path: Path) -> tuple[Classify, list[str], int, tuple[int, int]]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MtkdError(
            "predicting with an ONNX file needs onnxruntime: pip install 'mtkd[export]'"
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's errors for a damaged or foreign file
        raise MtkdError(f"cannot read ONNX model {path}: {str(exc).strip().splitlines()[0][:200]}") from None
    props = session.get_modelmeta().custom_metadata_map
    if ONNX_META not in props:
        raise MtkdError(f"{path} was not written by mtkd export (no class names in its metadata)")
    own = json.loads(props[ONNX_META])
    name = session.get_inputs()[0].name

    def classify(x: torch.Tensor) -> torch.Tensor:
        logits = session.run(None, {name: (x.float() / 255.0).numpy()})[0]
        return torch.from_numpy(logits).float().softmax(1)

    return classify, own["classes"], own["channels"], tuple(own["image_size"])


def torch_model(source: str, device: str) -> tuple[Classify, list[str], int, tuple[int, int]]:
    dev = pick_device(device)
    if is_exported(source):
        net, config = load_folder(source, dev)
        classes, channels, size = net.classes, int(config["model_args"]["in_chans"]), tuple(net.image_size)
    else:
        net, meta = load_deployable(source, dev)
        data, spec = meta["data"], meta["model"]
        classes, channels, size = list(data["classes"]), data["channels"], tuple(data["image_size"])
        if spec.get("inputs") == "files":  # a probe-fitted teacher reads files at its own input size
            size = (spec["input_size"],) * 2

    @torch.inference_mode()
    def classify(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(dev).float() / 255.0).float().softmax(1).cpu()

    return classify, [str(c) for c in classes], channels, size


def predict_files(
    source: str | os.PathLike, paths: list[str | os.PathLike], device: str = "auto", top_k: int = 5,
    batch_size: int = 64, workers: int | None = None, progress: bool = True,
) -> list[dict]:  # fmt: skip
    """One row per image: path, the top class, its probability and the top-k (class, probability)."""
    for flag, value in (("--top-k", top_k), ("--batch-size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MtkdError(f"{flag} must be a whole number >= 1, got {value!r}")
    source = os.fspath(source)
    if source.endswith(".onnx") and Path(source).is_file():
        classify, classes, channels, size = onnx_model(Path(source))
    else:
        classify, classes, channels, size = torch_model(source, device)
    if size[0] != size[1]:
        raise MtkdError(f"{source} takes {size[0]}x{size[1]} images; predict reads square ones only")
    files = image_files(list(paths))
    k = min(top_k, len(classes))
    workers = min(4, os.cpu_count() or 1) if workers is None else workers
    rows: list[dict] = []
    bar = make_progress(progress)
    say(f"classifying {len(files)} images with {source}")
    with bar:
        task = bar.add_task("predict", total=len(files), loss=0.0, acc=0.0, ips=0.0)
        lines, start = Milestones("predict", len(files)), time.perf_counter()
        chunks = [torch.arange(s.start, s.stop) for s in row_slices(0, len(files), batch_size)]
        for chunk, batch in zip(chunks, read_files(files, chunks, channels, size[0], workers), strict=True):
            values, indices = classify(batch).topk(k, dim=1)
            for i, vals, idx in zip(chunk.tolist(), values.tolist(), indices.tolist(), strict=True):
                top = [(classes[j], float(v)) for v, j in zip(vals, idx, strict=True)]
                rows.append({"path": files[i], "class": top[0][0], "probability": top[0][1], "top": top})
            ips = len(rows) / (time.perf_counter() - start)
            bar.update(task, advance=len(chunk), ips=ips)
            lines.update(len(rows), ips)
    return rows


def to_csv(rows: list[dict]) -> str:
    """path, class, probability, top5 (class:probability pairs joined by ';')."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "class", "probability", "top5"])
    for row in rows:
        top = ";".join(f"{c}:{p:.6f}" for c, p in row["top"])
        writer.writerow([row["path"], row["class"], f"{row['probability']:.6f}", top])
    return buf.getvalue()


def write_predictions(rows: list[dict], out: str | None) -> None:
    """The CSV to a file (atomically) or to stdout ('-' or None)."""
    text = to_csv(rows)
    if out in (None, "-"):
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write(out, text)

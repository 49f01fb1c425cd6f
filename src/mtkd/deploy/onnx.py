"""`mtkd export --format onnx / onnx-int8`: a trained model as ONNX, checked against PyTorch
with onnxruntime, and its int8 twin by static post-training quantisation.

The exported graph takes float images in [0, 1] ([N, C, H, W]) and includes the input
normalisation, so a deployment only scales pixels to [0, 1]. The int8 file is calibrated on
training images only; its accuracy and latency are measured beside the float file's.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtkd.data.base import stratified_split
from mtkd.deploy.hf import finished_run
from mtkd.engine.builders import load_deployable
from mtkd.engine.checkpoint import read_meta
from mtkd.errors import MtkdError
from mtkd.io import atomic_path


def _max_opset() -> int:
    """The newest opset torch's TorchScript exporter writes (18 where torch does not say)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 18


def _label(path: Path, data: dict) -> None:
    """Write the class names, channels and image size into the ONNX file's metadata (mtkd predict reads them)."""
    import onnx

    model = onnx.load(str(path))
    own = {
        "classes": [str(c) for c in data["classes"]],
        "channels": data["channels"],
        "image_size": list(data["image_size"]),
    }
    onnx.helper.set_model_props(model, {"mtkd": json.dumps(own)})
    onnx.save(model, str(path))


def export_onnx(checkpoint: str, out: str | Path, opset: int = 17, atol: float = 1e-4) -> dict:
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= _max_opset():
        raise MtkdError(f"--opset {opset!r}: this torch exports ONNX opsets 9 to {_max_opset()}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise MtkdError("export needs onnx and onnxruntime: pip install 'mtkd[export]'") from None
    finished_run(checkpoint)
    wrapped, meta = load_deployable(checkpoint, torch.device("cpu"))
    data = meta["data"]
    c, (h, w) = data["channels"], data["image_size"]
    example = torch.rand(4, c, h, w, generator=torch.Generator().manual_seed(0))
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped, (example,), str(tmp), input_names=["images"], output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False,
        )  # fmt: skip
        _label(tmp, data)
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {"images": example.numpy()})[0]
        with torch.inference_mode():
            torch_out = wrapped(example).numpy()
        diff = float(np.abs(onnx_out - torch_out).max())
        if diff > atol:
            raise MtkdError(f"ONNX outputs differ from PyTorch by {diff:.2e} (> {atol:.0e}); not written")
    return {"path": str(out), "max_abs_diff": diff, "input": [None, c, h, w], "classes": data["classes"]}


class _Calibration:
    """onnxruntime's CalibrationDataReader over float batches in [0, 1]."""

    def __init__(self, images: torch.Tensor, batch_size: int = 32):
        self.batches = iter([{"images": (b.float() / 255.0).numpy()} for b in images.split(batch_size)])

    def get_next(self) -> dict | None:
        return next(self.batches, None)


def _session(path: Path, threads: int | None = None):  # noqa: ANN202 - onnxruntime.InferenceSession
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = options.inter_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _top1(session: Any, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    right = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size), strict=True):
        logits = session.run(None, {"images": (x.float() / 255.0).numpy()})[0]
        right += int((torch.from_numpy(logits).argmax(1) == y).sum())
    return right / len(labels)


def _latencies(sessions: list[Any], image: np.ndarray, repeats: int = 200, warmup: int = 20) -> list[float]:
    """Median milliseconds per call of each session, timed in turn (interleaved), one image."""
    times: list[list[float]] = [[] for _ in sessions]
    for i in range(warmup + repeats):
        for session, own in zip(sessions, times, strict=True):
            start = time.perf_counter()
            session.run(None, {"images": image})
            if i >= warmup:
                own.append(time.perf_counter() - start)
    return [1000.0 * statistics.median(t) for t in times]


def int8_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".onnx") + ".int8.onnx")


def export_int8(
    checkpoint: str, out: str | Path, opset: int = 17, calibration: int = 512, calibrate: Any = None,
) -> dict:  # fmt: skip
    """The float ONNX file at `out` and its statically quantised int8 twin beside it
    (`NAME.int8.onnx`, onnxruntime's QDQ format, weights per channel), calibrated on `calibration`
    training images (stratified, never test) of the run's dataset or of `calibrate`; then the
    top-1 accuracy of both on the test split and their single-thread CPU latency, side by side."""
    from mtkd.engine.evaluate import run_dataset

    if isinstance(calibration, bool) or not isinstance(calibration, int) or calibration < 1:
        raise MtkdError(f"--calibration must be a whole number of images >= 1, got {calibration!r}")
    try:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError:
        raise MtkdError("export needs onnx and onnxruntime: pip install 'mtkd[export]'") from None
    meta = read_meta(checkpoint)
    dataset = run_dataset(meta, None, "--calibrate NAME")
    calib = dataset if calibrate is None else run_dataset(meta, calibrate, "--calibrate NAME")
    if calib.channels != meta["data"]["channels"] or tuple(calib.image_size) != tuple(
        meta["data"]["image_size"]
    ):
        raise MtkdError(
            f"calibration data {calib.name} has {calib.channels}-channel {calib.image_size[0]}x{calib.image_size[1]} "
            f"images; the model takes {meta['data']['channels']}-channel "
            f"{meta['data']['image_size'][0]}x{meta['data']['image_size'][1]} ones"
        )
    labels = calib.train.labels.numpy()
    n = min(calibration, len(labels))
    rows = np.sort(stratified_split(labels, n / len(labels), 0)[1]) if n < len(labels) else np.arange(n)
    info = export_onnx(checkpoint, out, opset)
    target = int8_path(out)
    with atomic_path(target) as tmp, tempfile.TemporaryDirectory() as work:
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(out), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(tmp), _Calibration(calib.train.images[torch.from_numpy(rows)]),
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        _label(tmp, meta["data"])
        _session(tmp)  # the file loads
    test = dataset.test
    full, int8 = _session(Path(out)), _session(target)
    acc = [_top1(s, test.images, test.labels) for s in (full, int8)]
    image = (test.images[:1].float() / 255.0).numpy()
    latency = _latencies([_session(Path(out), 1), _session(target, 1)], image)
    return {
        **info, "int8_path": str(target), "calibration_images": int(n), "calibration_data": calib.name,
        "test_images": len(test.labels), "float_acc": acc[0], "int8_acc": acc[1],
        "float_ms": latency[0], "int8_ms": latency[1],
        "float_bytes": Path(out).stat().st_size, "int8_bytes": target.stat().st_size,
    }  # fmt: skip


def int8_table(info: dict) -> Any:
    """The float and int8 files side by side: test accuracy, single-thread latency, size."""
    from rich.table import Table

    table = Table(
        title=f"float vs int8 on the test split ({info['test_images']} images), onnxruntime, 1 thread"
    )
    for col in ("file", "top-1", "latency (batch 1)", "size"):
        table.add_column(col)
    table.add_row(
        "float32",
        f"{100 * info['float_acc']:.2f}%",
        f"{info['float_ms']:.3f} ms",
        f"{info['float_bytes'] / 1e6:.2f} MB",
    )
    table.add_row(
        "int8",
        f"{100 * info['int8_acc']:.2f}%",
        f"{info['int8_ms']:.3f} ms",
        f"{info['int8_bytes'] / 1e6:.2f} MB",
    )
    return table


def int8_verdict(info: dict) -> list[str]:
    """What the numbers mean, plainly; a loss above 1 point is said first."""
    loss = 100 * (info["float_acc"] - info["int8_acc"])
    lines = [f"wrote {info['int8_path']} (calibrated on {info['calibration_images']} training images of "
             f"{info['calibration_data']}); int8 is {info['float_ms'] / info['int8_ms']:.2f}x the float file's speed"]  # fmt: skip
    if loss > 1:
        lines.insert(0, f"WARNING: int8 loses {loss:.2f} points of top-1 accuracy (more than 1): ship the float "
                        "file, or calibrate on more images (--calibration)")  # fmt: skip
    else:
        lines.append(f"int8 changes top-1 accuracy by {-loss:+.2f} points")
    return lines

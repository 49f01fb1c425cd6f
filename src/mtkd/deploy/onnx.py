"""`mtkd export`: a trained model as ONNX, checked against PyTorch with onnxruntime.

The exported graph takes float images in [0, 1] ([N, C, H, W]) and includes the input
normalisation, so a deployment only scales pixels to [0, 1].
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mtkd.engine.builders import load_deployable
from mtkd.errors import MtkdError
from mtkd.io import atomic_path


def _max_opset() -> int:
    """The newest opset torch's TorchScript exporter writes (18 where torch does not say)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 18


def export_onnx(checkpoint: str, out: str | Path, opset: int = 17, atol: float = 1e-4) -> dict:
    if isinstance(opset, bool) or not isinstance(opset, int) or not 9 <= opset <= _max_opset():
        raise MtkdError(f"--opset {opset!r}: this torch exports ONNX opsets 9 to {_max_opset()}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise MtkdError("export needs onnx and onnxruntime: pip install 'mtkd[export]'") from None
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
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        onnx_out = session.run(None, {"images": example.numpy()})[0]
        with torch.inference_mode():
            torch_out = wrapped(example).numpy()
        diff = float(np.abs(onnx_out - torch_out).max())
        if diff > atol:
            raise MtkdError(f"ONNX outputs differ from PyTorch by {diff:.2e} (> {atol:.0e}); not written")
    return {"path": str(out), "max_abs_diff": diff, "input": [None, c, h, w], "classes": data["classes"]}

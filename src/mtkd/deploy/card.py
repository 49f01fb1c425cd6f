"""The model card (README.md) of an exported student: YAML metadata the Hugging Face Hub reads,
then what the model is, what it learned from, how well and at what cost, and how to load it."""

from __future__ import annotations

from typing import Any

import yaml


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _metadata(facts: dict) -> dict:
    acc = facts[
        "test_acc"
    ]  # these weights' accuracy, which evaluating them reproduces (the card adds the seeds' mean)
    tags = ["image-classification", "knowledge-distillation", "mtkd"]
    meta: dict[str, Any] = {}
    if facts["library"] == "timm":
        meta["library_name"] = "timm"
        tags.append("timm")
    meta |= {
        "pipeline_tag": "image-classification",
        "tags": tags,
        "datasets": [facts["dataset"]],
        "metrics": ["accuracy"],
        "model-index": [{
            "name": facts["architecture"],
            "results": [{
                "task": {"type": "image-classification", "name": "Image Classification"},
                "dataset": {"type": facts["dataset"], "name": facts["dataset"], "split": "test"},
                "metrics": [{"type": "accuracy", "value": round(float(acc), 6), "name": "top-1 accuracy"}],
            }],
        }],
    }  # fmt: skip
    return meta


def _start(source: str) -> str:
    return "random weights" if source == "random init" else f"pretrained weights ({source})"


def _learned_from(facts: dict) -> str:
    if not facts["teachers"]:
        return "the labels alone (no teachers)"
    methods = ", ".join(m for m in facts["methods"] if m != "none") or "none"
    return f"{', '.join(facts['teachers'])} through {methods}, and the labels"


def _accuracy(facts: dict, study: dict | None) -> list[str]:
    if study is None:
        return [
            f"Top-1 accuracy on the test split: **{_pct(facts['test_acc'])}** (one run, seed {facts['seed']}; "
            f"{_pct(facts['val_acc'])} on validation). One run says nothing of the spread over seeds; "
            "`mtkd study` measures it, and the same student without teachers beside it.",
        ]
    lines = [
        f"From the study *{study['study']}*, configuration `{study['label']}` "
        f"({study['seeds']} seeds; chosen as the best on validation, never on test):",
        "",
        "| | test top-1 |",
        "|---|---|",
        f"| this configuration, mean over seeds | {_pct(study['test_acc'])} ± {100 * study['test_std']:.2f} |",
        f"| this model (seed {facts['seed']}, best of its configuration on validation) | {_pct(facts['test_acc'])} |",
    ]
    if study.get("alone") is not None:
        lines.append(f"| the same student without teachers, mean over seeds | {_pct(study['alone'])} |")
    if study.get("gain") is not None:
        g = study["gain"]
        lines += [
            "",
            f"Gain over the student alone: {100 * g['mean']:+.2f} points, {100 * g['level']:.4g}% interval "
            f"[{100 * g['low']:+.2f}, {100 * g['high']:+.2f}] ({g['verdict']}).",
        ]
    return lines


def _usage(facts: dict, c: int, h: int, w: int) -> list[str]:
    pixels = (
        f"images = torch.rand(8, {c}, {h}, {w})  # pixels in [0, 1], {'grey' if c == 1 else 'RGB'}, {h}x{w}"
    )
    timm_lines = [
        "import timm, torch",
        'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
        '# once on the Hub: timm.create_model("hf-hub:ORG/NAME", pretrained=True)',
        "cfg = model.pretrained_cfg  # input size, mean, std, interpolation",
        'mean, std = (torch.tensor(cfg[k]).view(1, -1, 1, 1) for k in ("mean", "std"))',
        pixels,
        "logits = model((images - mean) / std)",
        "",
    ]
    mtkd_lines = [
        *(["# or with mtkd, which normalises for you:"] if facts["library"] == "timm" else []),
        "import mtkd, torch",
        'student = mtkd.load_student("local-dir:PATH/TO/THIS/FOLDER")  # normalises its own input',
        pixels,
        "logits = student(images)  # student.classes names the columns",
    ]
    return [
        "```python",
        *(timm_lines if facts["library"] == "timm" else []),
        *mtkd_lines,
        "```",
        "",
        f"Images are {'grey (one channel)' if c == 1 else 'RGB'}, resized bilinearly to {h}x{w} without a crop, "
        "then normalised with the mean and std in config.json (the training data's own statistics). "
        "`mtkd predict FOLDER IMAGES...` classifies files and folders of images to CSV.",
    ]  # fmt: skip


def _deployed(info: dict | None) -> list[str]:
    """The ONNX files shipped beside the weights, with their measured accuracy and latency."""
    if not info:
        return []
    loss = 100 * (info["float_acc"] - info["int8_acc"])
    return [
        "",
        f"This folder also holds `model.onnx` (float32) and `model.int8.onnx` (static int8, calibrated on "
        f"{info['calibration_images']} training images), which take pixels in [0, 1] and normalise them inside. "
        f"Measured side by side with onnxruntime, one thread, on the {info['test_images']} test images:",
        "",
        "| file | test top-1 | latency (batch 1) | size |",
        "|---|---|---|---|",
        f"| model.onnx | {_pct(info['float_acc'])} | {info['float_ms']:.3f} ms | {info['float_bytes'] / 1e6:.2f} MB |",
        f"| model.int8.onnx | {_pct(info['int8_acc'])} | {info['int8_ms']:.3f} ms | {info['int8_bytes'] / 1e6:.2f} MB |",
        "",
        f"**int8 loses {loss:.2f} points of accuracy (more than 1): ship the float file.**" if loss > 1
        else f"int8 changes top-1 accuracy by {-loss:+.2f} points.",
    ]  # fmt: skip


def model_card(facts: dict, study: dict | None = None) -> str:
    """The README.md of an exported student."""
    c, (h, w) = facts["channels"], facts["image_size"]
    latency = study["latency_ms"] if study and study.get("latency_ms") else facts["latency_ms"]
    command = (study or {}).get("command") or facts.get("command")
    classes = ", ".join(str(x) for x in facts["classes"])
    lines = [
        "---",
        yaml.safe_dump(_metadata(facts), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {facts['student']} on {facts['dataset']}",
        "",
        f"A small image classifier ({facts['architecture']}, {facts['params']:,} parameters) for "
        f"{len(facts['classes'])} classes of {facts['dataset']}: {classes}. "
        f"It started from {_start(facts['weights_source'])} and learned from {_learned_from(facts)}, "
        f"for {facts['epochs']} epochs on {facts['train_images'] or 'its'} training images.",
        "",
        "## Accuracy",
        "",
        *_accuracy(facts, study),
        "",
        "## Cost",
        "",
        "| parameters | MACs per image | CPU latency (1 thread, batch 1) |",
        "|---|---|---|",
        f"| {facts['params']:,} | {facts['macs']:,} | {latency:.2f} ms (PyTorch, float32) |",
        "",
        "The latency is the median of timed passes on the machine that exported it; "
        "`mtkd export RUN --format onnx-int8` measures the float and int8 ONNX files side by side.",
        *_deployed(facts.get("deployed")),
        "",
        "## How to use it",
        "",
        *_usage(facts, c, h, w),
        "",
        "## How it was made",
        "",
        f"With mtkd {facts['version']}, multi-teacher knowledge transfer"
        + (f": `{command}`." if command else "."),
        "",
    ]  # fmt: skip
    return "\n".join(lines)

"""A study's deliverable: `OUTPUT/model/`, the student its answers chose, ready to ship.

The configuration is the one best on validation (mean over its seeds) among every student
configuration the study confirmed, and the run is its seed best on validation: the test split
never chooses. The folder is `mtkd export --format hf`'s (config.json, model.safetensors, a
model card with the study's interval), plus `model.onnx` and its int8 twin with their measured
accuracy and latency where onnxruntime is installed. `--report-only` builds it again.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mtkd.console import say
from mtkd.deploy.hf import export_folder
from mtkd.errors import MtkdError
from mtkd.study.answers import Group, best_by_val, student_groups
from mtkd.study.results import run_path

READINGS = {"above": "above 0: it helps", "below": "below 0: it hurts", "equivalent": "within the margin of 0",
            "unsettled": "not settled"}  # fmt: skip


def chosen_run(rows: list[dict]) -> tuple[Group, dict] | None:
    """(configuration best on validation over every student, its seed best on validation)."""
    groups = [g for gs in student_groups(rows).values() for g in gs]
    top = best_by_val(groups)
    if top is None:
        return None
    row = max(top.rows.values(), key=lambda r: (float(r["val_acc"]), -int(r["seed"])))
    return top, row


def _onnx_files(folder: Path, checkpoint: str) -> dict | None:
    from mtkd.deploy.onnx import export_int8

    return export_int8(checkpoint, folder / "model.onnx")


def deliver(study_name: str, rows: list[dict], answers: dict, study: Path) -> dict | None:
    """Write `study/model/`; what it holds, for the report (None when no student finished)."""
    found = chosen_run(rows)
    if found is None:
        return None
    top, row = found
    entry = next(c for c in answers[top.student]["configs"] if c["label"] == top.short)
    alone = next((g for g in student_groups(rows)[top.student] if g.method == "none"), None)
    gain = None
    if entry.get("vs_alone"):
        iv = entry["vs_alone"]
        gain = {"mean": iv["diff"], "low": iv["lo"], "high": iv["hi"], "level": iv["level"],
                "verdict": READINGS[iv["reading"]]}  # fmt: skip
    facts = {
        "study": study_name, "label": f"{top.student}, {top.short}", "seeds": len(top.rows),
        "test_acc": top.stat("test_acc")[0], "test_std": top.stat("test_acc")[1],
        "alone": alone.stat("test_acc")[0] if alone is not None and alone is not top else None,
        "gain": gain, "latency_ms": float(row["latency_ms"]) if row.get("latency_ms") else None,
        "command": f"mtkd study {study / 'study.yaml'}",
    }  # fmt: skip
    onnx = importlib.util.find_spec("onnxruntime") is not None
    say(f"model: {top.student}, {top.short}, seed {row['seed']} (best on validation) -> {study / 'model'}"
        + (" with its ONNX and int8 files" if onnx else ""))  # fmt: skip
    try:
        info = export_folder(run_path(study, row), study / "model", facts, _onnx_files if onnx else None)
    except MtkdError as exc:
        say(f"[yellow]warning[/yellow]: no model/ folder: {exc}")
        return {"error": str(exc), "student": top.student, "config": top.short, "seed": int(row["seed"])}
    return {
        "student": top.student, "config": top.short, "seed": int(row["seed"]), "run": row["run"],
        "val_acc": float(row["val_acc"]), "config_val_acc": top.stat("val_acc")[0],
        "test_acc": float(row["test_acc"]), "library": info["library"], "architecture": info["architecture"],
        "params": int(row["params"]), "latency_ms": facts["latency_ms"], "deployed": info["facts"]["deployed"],
    }  # fmt: skip

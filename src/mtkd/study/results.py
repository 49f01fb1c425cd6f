"""A study's results: one row per finished run, inference latency per architecture, results.csv/json.

Latency is measured here, once per architecture and input size, on the CPU with the study's
batch size, and kept in `latency.json` so a repeated report does not time models again.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from mtkd.deploy.latency import median_ms
from mtkd.engine.checkpoint import read_meta, read_summary
from mtkd.io import atomic_write, read_json, write_json
from mtkd.study.config import LatencyConfig
from mtkd.study.plan import Job

COLUMNS = [
    "kind", "student", "model", "method", "teachers", "n_teachers", "seed", "val_acc", "test_acc",
    "test_acc_last", "best_epoch", "epochs", "full_epochs", "stage", "val_count", "params", "extra_train_params", "macs", "latency_ms", "seconds", "num_classes", "run",
]  # fmt: skip


def run_folder(job: Job) -> Path:
    return Path(job.info["checkpoint"]) if job.config is None else Path(job.config.output.dir)


def collect(jobs: list[Job], study: Path) -> tuple[list[dict], dict[str, dict]]:
    """(rows of the finished runs, run folder (as in the rows) -> its summary.json)."""
    rows, summaries = [], {}
    for job in jobs:
        folder = run_folder(job)
        path = folder / "summary.json"
        if not path.is_file():
            continue
        s = read_summary(path)
        summaries[_relative(folder, study)] = s
        info = job.info
        teachers = info.get("teachers", [])
        if job.kind == "student":
            seed = info["seed"]
        else:  # adapted by the study (one row per teacher seed) or given by the user
            seed = read_json(folder / "best.json")["config"]["train"]["seed"]
        rows.append({
            "kind": job.kind, "student": info.get("student", ""), "model": s["name"],
            "method": info.get("method", ""), "teachers": "+".join(teachers) if job.kind == "student" else info["teacher"],
            "n_teachers": len(teachers), "seed": seed,
            "val_acc": s["val_acc"], "test_acc": s["test_acc"], "test_acc_last": s["test_acc_last"],
            "best_epoch": s["best_epoch"], "epochs": s["epochs"], "params": s["params"],
            "full_epochs": info.get("full_epochs", s["epochs"]), "stage": info.get("stage", "confirm"),
            "val_count": s.get("val_count"),
            "extra_train_params": s.get("extra_train_params", 0), "macs": s["macs"], "latency_ms": None,
            "seconds": s["seconds"], "num_classes": len(s.get("classes", [])) or None, "run": _relative(folder, study),
        })  # fmt: skip
    return rows, summaries


def run_path(study: Path, row: dict) -> Path:
    """A row's run folder: relative to the study, or absolute for a teacher given by the user."""
    return Path(row["run"]) if Path(row["run"]).is_absolute() else study / row["run"]


def _relative(folder: Path, study: Path) -> str:
    try:
        return str(folder.resolve().relative_to(study.resolve()))
    except ValueError:
        return str(folder)


@torch.inference_mode()
def measure_latency(folder: Path, cfg: LatencyConfig) -> float:
    """Median wall time of one forward pass per image, in milliseconds, on the CPU."""
    from mtkd.engine.builders import load_model

    model, meta, transform = load_model(str(folder / "best.json"), torch.device("cpu"))
    c, (h, w) = meta["data"]["channels"], meta["data"]["image_size"]
    x = torch.randint(0, 256, (cfg.batch_size, c, h, w), dtype=torch.uint8)
    return median_ms(lambda: model(transform(x)), cfg.repeats, threads=cfg.threads) / cfg.batch_size


def add_latency(rows: list[dict], study: Path, cfg: LatencyConfig) -> None:
    """Fill latency_ms: one measurement per (architecture, input), shared by its seeds and methods."""
    path = study / "latency.json"
    known = read_json(path, default={})
    settings = f"batch {cfg.batch_size}, threads {cfg.threads}"
    for row in rows:
        folder = run_path(study, row)
        meta = read_meta(str(folder / "best.json"))
        spec = meta["model"]
        key = f"{row['kind']}:{spec['name']}:{spec.get('input_size')}:{spec.get('head')}:{meta['data']['image_size']}:{settings}"
        if key not in known:
            known[key] = measure_latency(folder, cfg)
            write_json(path, known)
        row["latency_ms"] = known[key]


def write_results(rows: list[dict], study: Path, extra: dict) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in COLUMNS})
    atomic_write(study / "results.csv", buf.getvalue())
    write_json(study / "results.json", {"runs": rows, **extra})

"""Experiment trackers beside metrics.csv and TensorBoard: Weights & Biases and MLflow.

Chosen with `output.trackers: [wandb, mlflow]`; only rank 0 talks to them. W&B runs offline by
default (`output.wandb_mode`), writing under `<run>/wandb` for a later `wandb sync`; MLflow logs
to `output.mlflow_uri`, by default a file store in `<run>/mlruns` (`mlflow ui --backend-store-uri`).
A resumed run continues the same tracker run (its ids are kept in `<run>/trackers.json`).
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any, Protocol

from mtkd.engine.config import OutputConfig
from mtkd.errors import MtkdError
from mtkd.io import read_json, write_json

PACKAGES = {"wandb": "wandb", "mlflow": "mlflow"}


class Tracker(Protocol):
    def log(self, values: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def check_trackers(out: OutputConfig) -> None:
    """The one-line error a missing tracker package would give, before anything is written."""
    for name in out.trackers:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            pip = "mlflow-skinny" if name == "mlflow" else name
            raise MtkdError(
                f"output.trackers: {name} is not installed (pip install {pip}, or 'mtkd[trackers]')"
            )


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class _WandB:
    def __init__(self, out: OutputConfig, folder: Path, config: dict, run_id: str | None):
        import wandb

        self.run = wandb.init(
            project=out.project, name=folder.name, dir=str(folder), mode=out.wandb_mode, config=config,
            id=run_id, resume="allow" if run_id else None, settings=wandb.Settings(console="off", silent=True),
        )  # fmt: skip
        self.id = self.run.id

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class _MLflow:
    def __init__(self, out: OutputConfig, folder: Path, config: dict, run_id: str | None):
        from mlflow.tracking import MlflowClient

        uri = out.mlflow_uri or (folder / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps its file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(out.project)
            experiment = found.experiment_id if found else self.client.create_experiment(out.project)
            run_id = self.client.create_run(experiment, run_name=folder.name).info.run_id
            for key, value in _flat(config).items():
                self.client.log_param(run_id, key, str(value)[:500])
        self.id = run_id

    def log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "_"), float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def close(self) -> None:
        self.client.set_terminated(self.id)


def open_trackers(out: OutputConfig, folder: Path, config: dict, resuming: bool) -> list[Tracker]:
    """The trackers of `output.trackers`, continuing the run's earlier tracker runs on resume."""
    if not out.trackers:
        return []
    check_trackers(out)
    ids_path = folder / "trackers.json"
    ids = read_json(ids_path, default={}) if resuming else {}
    kinds = {"wandb": _WandB, "mlflow": _MLflow}
    trackers = {}
    for name in out.trackers:
        try:
            trackers[name] = kinds[name](out, folder, config, ids.get(name))
        except Exception as exc:  # noqa: BLE001 - the tracker's own failure, in one line
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise MtkdError(f"output.trackers: {name} could not start: {first}") from None
    write_json(ids_path, {name: t.id for name, t in trackers.items()})
    return list(trackers.values())

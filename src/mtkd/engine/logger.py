"""Where metrics go: CSV files, TensorBoard, the trackers of `output.trackers`, and the terminal."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mtkd.engine.config import OutputConfig
from mtkd.engine.trackers import open_trackers
from mtkd.errors import MtkdError
from mtkd.io import atomic_write


def _read_rows(path: Path, resume_epoch: int) -> list[dict]:
    if not (resume_epoch and path.is_file()):
        return []
    try:
        with open(path, newline="") as fh:
            return [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
    except (ValueError, KeyError, TypeError, csv.Error, UnicodeDecodeError):
        raise MtkdError(
            f"{path} is damaged: restore it, or delete it to resume without the earlier epochs' rows"
        ) from None


def _write_rows(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buffer.getvalue())


class MetricsLog:
    """Per epoch: a row of metrics.csv and TensorBoard points; every `output.log_every` steps, a row
    of steps.csv and a `step/...` point. On resume, rows past the resumed epoch are dropped."""

    def __init__(
        self, folder: Path, out: OutputConfig, resume_epoch: int = 0, config: dict | None = None,
        steps_per_epoch: int = 1,
    ):  # fmt: skip
        tensorboard = out.tensorboard
        self.steps_per_epoch = steps_per_epoch
        self.trackers = open_trackers(out, folder, config or {}, resume_epoch > 0)
        self.csv_path, self.steps_path = folder / "metrics.csv", folder / "steps.csv"
        self.rows = _read_rows(self.csv_path, resume_epoch)
        self.steps = _read_rows(self.steps_path, resume_epoch)
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(folder / "tb"), purge_step=resume_epoch + 1 if resume_epoch else None
            )

    def log(self, row: dict, steps: list[dict] = ()) -> None:
        self.rows.append(row)
        _write_rows(self.csv_path, self.rows)
        if steps:
            self.steps.extend(steps)
            _write_rows(self.steps_path, self.steps)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            for step in steps:
                for key, value in step.items():
                    if key not in ("step", "epoch"):
                        self.writer.add_scalar(f"step/{key}", value, step["step"])
            self.writer.flush()
        for tracker in self.trackers:
            for step in steps:
                tracker.log(
                    {f"step/{k}": v for k, v in step.items() if k not in ("step", "epoch")}, step["step"]
                )
            values = {
                k.replace("_", "/", 1): v
                for k, v in row.items()
                if k != "epoch" and isinstance(v, int | float)
            }
            # One increasing step for trackers: an epoch's row is logged at the epoch's last step.
            tracker.log({**values, "epoch": row["epoch"]}, row["epoch"] * self.steps_per_epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        for tracker in self.trackers:
            tracker.close()

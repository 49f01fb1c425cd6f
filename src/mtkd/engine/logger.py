"""Where metrics go: a CSV file, TensorBoard, and the terminal (rich progress bars)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mtkd.io import atomic_write


class MetricsLog:
    """One CSV row and one TensorBoard point per epoch. On resume, rows past the epoch are dropped."""

    def __init__(self, folder: Path, tensorboard: bool, resume_epoch: int = 0):
        self.csv_path = folder / "metrics.csv"
        self.rows: list[dict] = []
        if resume_epoch and self.csv_path.is_file():
            with open(self.csv_path) as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["epoch"]) <= resume_epoch]
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(
                str(folder / "tb"), purge_step=resume_epoch + 1 if resume_epoch else None
            )

    def log(self, row: dict) -> None:
        self.rows.append(row)
        buffer = io.StringIO()
        fields = list(dict.fromkeys(k for r in self.rows for k in r))
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write(self.csv_path, buffer.getvalue())
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

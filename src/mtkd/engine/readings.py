"""What the host reads of the training steps: loss terms and correct predictions, kept on the
training device and read in one copy per interval.

On a GPU, reading a value (`.item()`, `bool(tensor)`) waits for every queued kernel: read every
step, it leaves the GPU idle while the host prepares the next step. So each step appends one small
device vector (its loss terms and its count of correct predictions) and the host reads them
together every `interval` steps (the logging interval on CUDA; every step on the CPU, where a
read costs nothing). The host then sums them in step order, exactly as if it had read each step,
so the numbers do not depend on the interval, and a non-finite term is reported with the step
and value where it first appeared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mtkd.errors import MtkdError


def read_interval(device: torch.device, log_every: int) -> int:
    """Steps between two reads: 1 where reading is free (CPU), the logging interval (or 50) on a GPU."""
    return 1 if device.type == "cpu" else max(1, log_every or 50)


@dataclass
class StepRow:
    """One step as the host reads it: its position, its rows, its loss terms, its correct count."""

    step: int  # 0-based within the epoch
    rows: int
    terms: dict[str, float]
    correct: float


@dataclass
class Readings:
    """Steps not yet read: (step, rows, term names, device vector [terms..., correct])."""

    pending: list[tuple[int, int, tuple[str, ...], torch.Tensor]] = field(default_factory=list)

    def add(
        self, step: int, terms: dict[str, torch.Tensor], logits: torch.Tensor, target: torch.Tensor
    ) -> None:
        """Keep one step's terms and correct count on their device (no read)."""
        correct = (logits.detach().argmax(1) == target).sum()
        vec = torch.stack([*(t.detach().double() for t in terms.values()), correct.double()])
        self.pending.append((step, len(target), tuple(terms), vec))

    def __len__(self) -> int:
        return len(self.pending)

    def read(self, epoch: int, folder: object) -> list[StepRow]:
        """Every pending step, read in one copy; a non-finite term stops training with the first
        step and term where it appeared."""
        if not self.pending:
            return []
        values = torch.stack([vec for *_, vec in self.pending]).tolist()
        rows = []
        for (step, n, names, _), row in zip(self.pending, values, strict=True):
            for name, value in zip(names, row, strict=False):
                if not math.isfinite(value):
                    raise MtkdError(
                        f"loss term '{name}' is {value} at epoch {epoch}, step {step + 1}; stopped "
                        f"(the last good checkpoint stays in {folder}): lower the learning rate"
                    )
            rows.append(StepRow(step, n, dict(zip(names, row[:-1], strict=True)), row[-1]))
        self.pending.clear()
        return rows

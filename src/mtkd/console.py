"""The terminal: one-line messages and progress bars (on stderr, so stdout stays for results)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


def make_progress(enabled: bool) -> Progress:
    """A progress bar with loss, accuracy, images/s and time left; silent when not on a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.3f}  {task.fields[ips]:.0f} img/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (enabled and sys.stderr.isatty() and _main_process()),
    )


def _main_process() -> bool:
    """Under torchrun only rank 0 talks; errors are still printed by every process."""
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    if _main_process():
        console.print(message, highlight=False, soft_wrap=True)


class Milestones:
    """Plain progress lines every 10% for logs, where no progress bar is drawn (not a terminal)."""

    def __init__(self, label: str, total: int, done: int = 0):
        self.label, self.total = label, max(1, total)
        self.next = (done * 10 // self.total + 1) if not sys.stderr.isatty() and _main_process() else 11

    def update(self, done: int, ips: float) -> None:
        if self.next <= 10 and done * 10 >= self.next * self.total:
            say(f"{self.label}: {100 * done // self.total}% ({done}/{self.total}, {ips:.0f} img/s)")
            self.next = done * 10 // self.total + 1

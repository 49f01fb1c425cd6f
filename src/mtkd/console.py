"""The terminal: one-line messages and progress bars (on stderr, so stdout stays for results).

Messages go through Python's logging, logger "mtkd" (level INFO; only rank 0 under torchrun):
its own handler prints them on the rich console, and a program may add handlers of its own
(they get the text without console markup) or raise the level to quiet mtkd.
"""

from __future__ import annotations

import logging
import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

console = Console(stderr=True)
logger = logging.getLogger("mtkd")


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _main_process()


class _ConsoleHandler(logging.Handler):
    """Prints mtkd's records on the rich console, with their markup (colours, bold)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            console.print(getattr(record, "markup", record.getMessage()), highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - logging's own contract: report, never raise
            self.handleError(record)


logger.addFilter(_RankZero())
logger.addHandler(_ConsoleHandler())
if logger.level == logging.NOTSET:  # a level the program set before this first import stays
    logger.setLevel(logging.INFO)
logger.propagate = False  # printed once, by the handler above; add handlers to "mtkd" to get them too


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
    """One message (rich markup allowed) to the "mtkd" logger, at INFO."""
    logger.info(Text.from_markup(message).plain, extra={"markup": message})


class Milestones:
    """Plain progress lines every 10% for logs, where no progress bar is drawn (not a terminal)."""

    def __init__(self, label: str, total: int, done: int = 0):
        self.label, self.total = label, max(1, total)
        self.next = (done * 10 // self.total + 1) if not sys.stderr.isatty() and _main_process() else 11

    def update(self, done: int, ips: float) -> None:
        if self.next <= 10 and done * 10 >= self.next * self.total:
            say(f"{self.label}: {100 * done // self.total}% ({done}/{self.total}, {ips:.0f} img/s)")
            self.next = done * 10 // self.total + 1

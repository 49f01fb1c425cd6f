"""SIGINT and SIGTERM as requests to stop cleanly: the work in hand is saved, then the process exits.

A first signal only sets a flag that the training loop reads between steps; a second one
interrupts at once (KeyboardInterrupt), for a user who does not want to wait.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequests:
    """While active (a `with` block in the main thread), remembers the first SIGINT/SIGTERM."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

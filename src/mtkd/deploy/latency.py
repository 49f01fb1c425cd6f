"""Inference latency as the study and the exports measure it: the median of timed calls after
warm-up ones, on the CPU with a fixed number of threads."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(call: Callable[[], object], repeats: int = 30, warmup: int = 5, threads: int = 1) -> float:
    """Median wall time of `call()` in milliseconds, with torch limited to `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(warmup):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000.0 * statistics.median(times)

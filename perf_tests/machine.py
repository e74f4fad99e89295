"""What the perf scripts share (imported from the scripts' own folder): the machine they measured on, and how two
implementations are timed against each other."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _synchronize(device) -> None:
    if device is not None and getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device=None) -> float:
    """Seconds one call of `fn` takes, waiting for the device's queued work when `device` is CUDA."""
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


class Timings(dict):
    """name -> seconds of every call, the warm-up calls first: `median(name)` over the timed ones only."""

    def __init__(self, warmup: int):
        super().__init__()
        self.warmup = warmup

    def median(self, name: str) -> float:
        return statistics.median(self[name][self.warmup:])

    def first(self, name: str) -> float:
        """The first call: what start-up (compilation, autotuning, allocator growth) costs."""
        return self[name][0]


def alternate(runs: dict[str, Callable[[], object]], warmup: int, iters: int, device=None) -> Timings:
    """`warmup` untimed calls of each run, then `iters` rounds calling each run once in turn: alternating, so that
    load from other processes on a shared machine hits every side alike instead of whichever ran during a burst."""
    times = Timings(warmup)
    for name, fn in runs.items():
        times[name] = [timed(fn, device) for _ in range(warmup)]
    for _ in range(iters):
        for name, fn in runs.items():
            times[name].append(timed(fn, device))
    return times

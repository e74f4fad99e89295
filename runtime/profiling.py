"""Profiling hooks: a cudaProfilerApi capture range for `nsys profile --capture-range=cudaProfilerApi`,
and NVTX ranges per step so the timeline shows where each train step and eval begins.

Launchers set `run.profile_start_step` / `run.profile_stop_step` when NVTX_FLAG=1. On a machine without
CUDA these are no-ops, so the same loop runs everywhere.
"""

from __future__ import annotations

import contextlib

import torch


class StepProfiler:
    def __init__(self, start_step: int, stop_step: int):
        self.enabled = torch.cuda.is_available() and stop_step > start_step >= 0 and stop_step > 0
        self.start_step, self.stop_step = start_step, stop_step
        self.capturing = False

    def before_step(self, step: int) -> None:
        if self.enabled and step == self.start_step and not self.capturing:
            torch.cuda.synchronize()  # keep earlier asynchronous work out of the capture
            torch.cuda.cudart().cudaProfilerStart()
            self.capturing = True

    def after_step(self, step: int) -> None:
        if self.capturing and step + 1 >= self.stop_step:
            self.stop()

    def stop(self) -> None:
        if self.capturing:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStop()
            self.capturing = False

    def range(self, name: str):
        if not torch.cuda.is_available():
            return contextlib.nullcontext()
        return torch.cuda.nvtx.range(name)

"""Data parallelism for the models that need nothing else (ResNet, BERT): device, memory format,
compile, then DDP over the layout's data-parallel group, in that order (torchtitan's: compile before
the DDP wrapper, so DDP's bucketing sees the compiled graph's gradients)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.parallel import ParallelLayout


def replicate(model: nn.Module, layout: ParallelLayout, device: torch.device, *, benchmark: str,
              channels_last: bool = False, compile: bool = False, bucket_cap_mb: float = 25.0) -> nn.Module:
    if layout.tp * layout.pp * layout.cp != 1:
        raise ValueError(f"{benchmark} is data parallel only; got {layout.describe()}")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    if layout.dp > 1:
        # find_unused_parameters stays off: every parameter gets a gradient at every step.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=layout.dp_group(), gradient_as_bucket_view=True,
                                        bucket_cap_mb=bucket_cap_mb)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile, whose state_dict has the model's own names."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)

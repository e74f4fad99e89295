"""Apply the run's layout to a plain ResNet: memory format, compile, then data parallel.

ResNet is data parallel only. DDP keeps `broadcast_buffers` on so every replica evaluates with rank 0's
BatchNorm running statistics (each rank's differ, being computed on its own local batch).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, channels_last: bool,
                compile: bool) -> nn.Module:
    if layout.tp * layout.pp * layout.cp != 1:
        raise ValueError(f"resnet is data parallel only; got {layout.describe()}")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    if layout.dp > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=layout.dp_group(), gradient_as_bucket_view=True,
                                        bucket_cap_mb=64)  # NVIDIA's 64 MB fusion buffer
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile, whose state_dict has the model's own names."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)

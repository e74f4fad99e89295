"""Apply the run's layout to a plain BERT: device, compile, then data parallel.

BERT-large (335M parameters) trains data parallel only, as NVIDIA's submissions do up to 3,472 GPUs.
DDP's default gradient bucketing overlaps the all-reduce with the backward; the LAMB step then sees
the averaged gradient, so the global-norm clip is applied after the all-reduce (allowed by the spec).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, compile: bool) -> nn.Module:
    if layout.tp * layout.pp * layout.cp != 1:
        raise ValueError(f"bert is data parallel only; got {layout.describe()}")
    model = model.to(device)
    if compile:
        model = torch.compile(model)
    if layout.dp > 1:
        # find_unused_parameters stays off: every parameter gets a gradient at every step.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=layout.dp_group(), gradient_as_bucket_view=True)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile, whose state_dict has the model's own names."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)

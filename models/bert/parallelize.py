"""BERT's layout: data parallel only, as NVIDIA's submissions do up to 3,472 GPUs.

DDP's default gradient bucketing overlaps the all-reduce with the backward; the LAMB step then sees
the averaged gradient, so the global-norm clip is applied after the all-reduce (allowed by the spec).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, compile: bool) -> nn.Module:
    return replicate(model, layout, device, benchmark="bert", compile=compile)

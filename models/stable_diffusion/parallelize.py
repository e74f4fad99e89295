"""The SD UNet's layout: data parallel only (as the reference and NVIDIA's submission), channels_last."""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, compile: bool,
                ddp: bool = True) -> nn.Module:
    """`ddp=False`: the optimizer reduces the gradients itself (optim.distributed, apex's DistributedFusedAdam)."""
    return replicate(model, layout, device, benchmark="stable_diffusion", channels_last=device.type == "cuda",
                     compile=compile, ddp=ddp)

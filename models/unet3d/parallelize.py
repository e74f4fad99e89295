"""The 3D U-Net's layout: data parallel only (as the reference; NVIDIA's 768-GPU spatial parallelism is
not built). NDHWC is applied here, before replicate(): runtime.data_parallel's `channels_last` is the 4D
format, which a 5D model cannot take."""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, channels_last: bool,
                compile: bool) -> nn.Module:
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return replicate(model, layout, device, benchmark="unet3d", compile=compile)

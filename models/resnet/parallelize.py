"""ResNet's layout: data parallel only, channels_last, NVIDIA's 64 MB gradient fusion buffer.

DDP keeps `broadcast_buffers` on so every replica evaluates with rank 0's BatchNorm running statistics
(each rank's differ, being computed on its own local batch).
"""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, channels_last: bool,
                compile: bool) -> nn.Module:
    return replicate(model, layout, device, benchmark="resnet", channels_last=channels_last, compile=compile,
                     bucket_cap_mb=64)

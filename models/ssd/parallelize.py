"""RetinaNet's layout: data parallel only, channels_last. Frozen BN has no statistics to keep in step, so
replicas need no buffer broadcast and one process matches DP ranks up to summation order."""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device, *, channels_last: bool,
                compile: bool) -> nn.Module:
    return replicate(model, layout, device, benchmark="ssd", channels_last=channels_last, compile=compile)

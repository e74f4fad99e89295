"""R-GAT's layout: data parallel only, as the reference (DDP over the ranks; every parameter gets a gradient
each step: all eleven edge types are present, possibly empty, in every sampled subgraph)."""

from __future__ import annotations

import torch
from torch import nn

from runtime.data_parallel import replicate
from runtime.parallel import ParallelLayout


def parallelize(model: nn.Module, layout: ParallelLayout, device: torch.device) -> nn.Module:
    return replicate(model, layout, device, benchmark="gnn")

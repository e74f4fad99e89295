"""Data parallelism for the models that need nothing else (ResNet, BERT): device, memory format,
compile, then DDP over the layout's data-parallel group, in that order (torchtitan's: compile before
the DDP wrapper, so DDP's bucketing sees the compiled graph's gradients).

With an optimizer that reduces the gradients itself (apex's distributed optimizers, optim.distributed=true:
kernels/backends.distributed_optimizer_class), `replicate(..., ddp=False)` leaves DDP out, since both would
all-reduce, and `sharding_groups` gives that optimizer its groups."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from runtime.parallel import ParallelLayout


def replicate(model: nn.Module, layout: ParallelLayout, device: torch.device, *, benchmark: str,
              channels_last: bool = False, compile: bool = False, bucket_cap_mb: float = 25.0,
              ddp: bool = True) -> nn.Module:
    if layout.tp * layout.pp * layout.cp != 1:
        raise ValueError(f"{benchmark} is data parallel only; got {layout.describe()}")
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    if layout.dp > 1 and ddp:
        # find_unused_parameters stays off: every parameter gets a gradient at every step.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                        process_group=layout.dp_group(), gradient_as_bucket_view=True,
                                        bucket_cap_mb=bucket_cap_mb)
    return model


def sharding_groups(layout: ParallelLayout, ranks_per_node: int) -> tuple:
    """(data-parallel group, the group a distributed optimizer shards its state over, the group it replicates
    that state over or None): state sharded within a node and replicated across nodes, as NVIDIA's v4.0 BERT
    and Stable Diffusion do, so that the optimizer's reduce-scatter and all-gather stay on NVLink. Every rank
    must call this (it creates process groups on more than one node)."""
    if layout.dp != layout.world_size:
        raise ValueError(f"a distributed optimizer shards over data-parallel ranks only; got {layout.describe()}")
    world = layout.world_size
    if ranks_per_node >= world or world % ranks_per_node:
        return layout.dp_group(), layout.dp_group(), None
    nodes = world // ranks_per_node
    shard, _ = dist.new_subgroups_by_enumeration(
        [list(range(n * ranks_per_node, (n + 1) * ranks_per_node)) for n in range(nodes)])
    replica, _ = dist.new_subgroups_by_enumeration([list(range(j, world, ranks_per_node))
                                                    for j in range(ranks_per_node)])
    return layout.dp_group(), shard, replica


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile, whose state_dict has the model's own names."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return getattr(model, "_orig_mod", model)

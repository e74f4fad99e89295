"""Apply the run's layout to a plain DLRM: embeddings model parallel, MLPs data parallel.

One rank: the tables are allocated and initialised on the device, and torch's Adagrad is attached to each
of them to run inside the backward pass (`_apply_optimizer_in_backward`), so the gradient of a 26B-row table
is never kept around for a separate optimizer step.

World > 1: torchrec's DistributedModelParallel. The tables stay on `meta` until the plan is made; the
sharding planner places them (table-wise, row-wise, column-wise or data-parallel, by its cost model) from
the topology and the multi-hot pooling factors, and DMP allocates only each rank's shards. The in-backward
optimizer registered on the meta parameters tells the sharder to fuse Adagrad into FBGEMM's table-batched
embedding kernel (EXACT_ADAGRAD: per-element accumulator, duplicate ids in a batch summed before the
update, as the reference). The MLPs are wrapped in DDP by DMP. The pooled-embedding all-to-all divides its
gradient by the world size (torchrec's default), so embeddings see the gradient of the global-batch mean
loss, as the MLPs do through DDP's averaging.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward

from models.dlrm_dcnv2.model import DLRMDCNv2, table_name
from runtime.parallel import ParallelLayout

_GIB = 1024**3
_INIT_BLOCK_ROWS = 1 << 16


def embedding_optimizer_kwargs(lr: float, eps: float) -> dict:
    """torch.optim.Adagrad kwargs the fused kernel understands. lr_decay, weight_decay and the initial
    accumulator value are the closed rules' 0, which is both torch's and FBGEMM's default."""
    return {"lr": lr, "eps": eps}


def sharding_plan(model: DLRMDCNv2, *, world_size: int, local_world_size: int, compute_device: str,
                  local_batch: int, device_memory_gib: float, host_memory_gib: float, reserve_fraction: float,
                  process_group=None):
    """The planner's plan for `model`'s tables (collective when a process group is given)."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.planner.storage_reservations import HeuristicalStorageReservation

    topology = Topology(world_size=world_size, local_world_size=local_world_size, compute_device=compute_device,
                        hbm_cap=int(device_memory_gib * _GIB) if compute_device == "cuda" else None,
                        ddr_cap=int(host_memory_gib * _GIB))
    constraints = {table_name(k): ParameterConstraints(pooling_factors=[float(size)])
                   for k, size in enumerate(model.cfg.multi_hot_sizes)}
    planner = EmbeddingShardingPlanner(topology=topology, batch_size=local_batch, constraints=constraints,
                                       storage_reservation=HeuristicalStorageReservation(percentage=reserve_fraction))
    sharders = [EmbeddingBagCollectionSharder()]
    if process_group is None:
        return planner.plan(model, sharders), sharders
    return planner.collective_plan(model, sharders, process_group), sharders


def _table_block(seed: int, table: int, block: int, rows: int, dim: int, bound: float,
                 device: torch.device) -> torch.Tensor:
    """Rows [block * B, block * B + rows) of table `table`'s initial values, the same wherever generated."""
    g = torch.Generator(device=device).manual_seed((seed * 1_000_003 + table * 65_537 + block) % 2**63)
    return torch.empty(rows, dim, device=device).uniform_(-bound, bound, generator=g)


def init_embeddings(model: nn.Module, cfg, seed: int) -> None:
    """Give every table its initial values, uniform(+-1/sqrt(rows)) as torchrec's default, drawn per block of
    rows from a generator seeded by (seed, table, block). Each rank draws only the blocks its shards
    overlap, so the values depend on the seed alone, not on the sharding plan or the world size: a 1-rank
    and a 2-rank run start from the same tables."""
    state = model.state_dict()
    with torch.no_grad():
        for k, rows in enumerate(cfg.table_rows):
            key = next(name for name in state if name.endswith(f"embedding_bags.{table_name(k)}.weight"))
            bound = (1.0 / rows) ** 0.5
            for tensor, (row0, col0) in _shards(state[key]):
                n, width = tensor.shape
                first, last = row0 // _INIT_BLOCK_ROWS, (row0 + n - 1) // _INIT_BLOCK_ROWS
                for block in range(first, last + 1):
                    b0 = block * _INIT_BLOCK_ROWS
                    values = _table_block(seed, k, block, min(_INIT_BLOCK_ROWS, rows - b0), cfg.embedding_dim,
                                          bound, tensor.device)
                    lo, hi = max(row0, b0), min(row0 + n, b0 + len(values))
                    tensor[lo - row0:hi - row0] = values[lo - b0:hi - b0, col0:col0 + width].to(tensor.dtype)


def _shards(value) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    """(local tensor, (first row, first column)) of a plain, sharded or DTensor table."""
    if hasattr(value, "local_shards"):  # ShardedTensor
        return [(s.tensor, tuple(s.metadata.shard_offsets)) for s in value.local_shards()]
    if hasattr(value, "to_local"):  # DTensor (row-wise with uneven shards is not expected here)
        raise NotImplementedError("DTensor tables: initialise through their ShardedTensor view")
    return [(value, (0, 0))]


def parallelize(model: DLRMDCNv2, layout: ParallelLayout, device: torch.device, *, local_world_size: int,
                local_batch: int, lr: float, eps: float, device_memory_gib: float, host_memory_gib: float,
                reserve_fraction: float, seed: int) -> nn.Module:
    if layout.tp * layout.pp * layout.cp != 1:
        raise ValueError(f"dlrm_dcnv2 shards its tables with torchrec and replicates its MLPs; tp/pp/cp must be 1, "
                         f"got {layout.describe()}")
    kwargs = embedding_optimizer_kwargs(lr, eps)
    if layout.world_size == 1:
        # Materialise first: to_empty() replaces the Parameter objects, and with them the optimizer hooks.
        model.embeddings.to_empty(device=device)
        init_embeddings(model, model.cfg, seed)
        _apply_optimizer_in_backward(torch.optim.Adagrad, model.embeddings.parameters(), kwargs)
        return model
    from torchrec.distributed.model_parallel import DistributedModelParallel

    _apply_optimizer_in_backward(torch.optim.Adagrad, model.embeddings.parameters(), kwargs)
    plan, sharders = sharding_plan(model, world_size=layout.world_size, local_world_size=local_world_size,
                                   compute_device=device.type, local_batch=local_batch,
                                   device_memory_gib=device_memory_gib, host_memory_gib=host_memory_gib,
                                   reserve_fraction=reserve_fraction, process_group=dist.GroupMember.WORLD)
    cfg = model.cfg
    sharded = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    init_embeddings(sharded, cfg, seed)
    return sharded


def unwrap(model: nn.Module) -> nn.Module:
    """The DLRMDCNv2 under DistributedModelParallel (its tables then sharded modules)."""
    return getattr(model, "module", model)  # DistributedModelParallel.module skips its own DDP wrapper


def set_learning_rate(model: nn.Module, dense_optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Both optimizers' learning rate (warm-up runs at lr 0 so that it changes no weight)."""
    for group in dense_optimizer.param_groups:
        group["lr"] = lr
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None:
        for group in fused.param_groups:
            group["lr"] = lr
        fused.step()  # torchrec pushes param-group changes into the fused kernels on step()
        return
    for p in unwrap(model).embeddings.parameters():
        for opt in p._in_backward_optimizers:
            for group in opt.param_groups:
                group["lr"] = lr


def reset_optimizer_state(model: nn.Module, dense_optimizer: torch.optim.Optimizer) -> None:
    """Adagrad accumulators back to the initial value (0) and step counts to 0. The step count is a
    per-parameter state tensor in torch.optim.Adagrad and a per-group number in kernels' FusedAdagrad (the
    dense optimizer), whose accumulators are views of one flat buffer, filled in place."""
    optimizers = [dense_optimizer]
    fused = getattr(model, "fused_optimizer", None)
    if fused is None:
        optimizers += [o for p in unwrap(model).embeddings.parameters() for o in p._in_backward_optimizers]
    with torch.no_grad():
        for opt in optimizers:
            for group in opt.param_groups:
                initial = group.get("initial_accumulator_value", 0.0)
                if "step" in group:
                    group["step"] = 0
                for p in group["params"]:
                    for key, value in opt.state.get(p, {}).items():
                        if torch.is_tensor(value):
                            value.fill_(initial if key == "sum" else 0)
        if fused is not None:
            for state in fused.state.values():
                for value in state.values():
                    for shard in _local_tensors(value):
                        shard.zero_()


def _local_tensors(value) -> list[torch.Tensor]:
    if hasattr(value, "local_shards"):  # ShardedTensor
        return [s.tensor for s in value.local_shards()]
    if hasattr(value, "to_local"):  # DTensor
        return [value.to_local()]
    return [value] if torch.is_tensor(value) else []

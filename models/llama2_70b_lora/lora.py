"""LoRA adapters on megatron-core's tensor-parallel linears, split over TP the way NeMo's parallel adapters are.

    y = base(x) + B(A(dropout(x))) * alpha / rank      (A: rank x in, random; B: out x rank, zero)

On the fused QKV (a column-parallel linear; its input replicated over TP, or sequence-sharded under SP):
    A is split over its rank rows: every TP rank projects the (gathered) input onto its rank/tp rows, the
    rank-r activation is all-gathered, and B is split over its output rows exactly as the base's output
    (megatron's per-query-group q/k/v rows), so the adapter adds to the rank's own QKV shard.
On the attention output projection (row-parallel; its input split over the hidden dimension):
    A is split over its input columns, the rank-r partial products are all-reduced, B is split over its
    output rows and its output all-gathered to the full hidden size; under SP the result is then split
    over the sequence, as the base's reduce-scatter leaves its output.
Every communication here is one of megatron's autograd mappings, so the backward is the transpose: the
input gradient of each adapter is reduced over TP (reduce-scattered under SP) as the base's is.

A is initialised on the full matrix (PEFT's kaiming-uniform, a=sqrt(5)) from the default generator and then
sliced, so every TP layout starts from the same adapter; B is zero, so the adapted model starts equal to the
base. The base weight is frozen (requires_grad False: megatron's frozen-weight linear computes no wgrad).
Dropout on an input that differs per TP rank (sequence- or hidden-sharded) draws from the model-parallel
RNG (as megatron's attention dropout); on a TP-replicated input from the default generator, equal on every
TP rank, so the replicas agree.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state, tensor_parallel
from megatron.core.tensor_parallel.layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    set_tensor_model_parallel_attributes,
)
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.utils import make_sharded_tensors_for_checkpoint
from torch import nn

LORA_PREFIX = "lora_"  # every adapter parameter's name starts with it (checkpoints keep only these)


@dataclass(frozen=True)
class LoraSettings:
    rank: int
    alpha: float
    dropout: float

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _tp() -> tuple[int, int]:
    return (parallel_state.get_tensor_model_parallel_world_size(), parallel_state.get_tensor_model_parallel_rank())


def _sharded_parameter(full_shape: tuple[int, int], partition_dim: int, init, dtype) -> nn.Parameter:
    """This TP rank's slice of a [out, in] matrix initialised whole (the same full matrix under any TP)."""
    size, rank = _tp()
    if full_shape[partition_dim] % size:
        raise ValueError(f"LoRA: dimension {full_shape[partition_dim]} of {full_shape} is not divisible by tp={size}")
    full = torch.empty(full_shape, dtype=torch.float32)
    init(full)
    part = full_shape[partition_dim] // size
    local = full.narrow(partition_dim, rank * part, part).to(dtype).contiguous()
    param = nn.Parameter(local)
    set_tensor_model_parallel_attributes(param, True, partition_dim, 1)
    return param


def _kaiming(t: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # PEFT's lora_A init


class LoraAdapter(nn.Module):
    """The adapter of one linear (see the module docstring); `row_parallel` says which of the two layouts."""

    def __init__(self, in_features: int, out_features: int, settings: LoraSettings, *, row_parallel: bool,
                 sequence_parallel: bool, dtype: torch.dtype):
        super().__init__()
        self.settings = settings
        self.row_parallel = row_parallel
        self.sequence_parallel = sequence_parallel and _tp()[0] > 1
        r = settings.rank
        # A: split over rank rows (QKV) or input columns (output projection); B: over its output rows.
        self.lora_a = _sharded_parameter((r, in_features), 1 if row_parallel else 0, _kaiming, dtype)
        self.lora_b = _sharded_parameter((out_features, r), 0, nn.init.zeros_, dtype)
        self.dropout = nn.Dropout(settings.dropout)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.settings.dropout > 0):
            return x
        sharded = self.row_parallel or self.sequence_parallel
        fork = tensor_parallel.get_cuda_rng_tracker().fork() if sharded and _tp()[0] > 1 else contextlib.nullcontext()
        with fork:
            return self.dropout(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._dropout(x)
        if self.row_parallel:
            a = reduce_from_tensor_model_parallel_region(F.linear(x, self.lora_a))
            y = gather_from_tensor_model_parallel_region(F.linear(copy_to_tensor_model_parallel_region(a),
                                                                  self.lora_b))
            y = scatter_to_sequence_parallel_region(y) if self.sequence_parallel else y
            return y * self.settings.scale
        if self.sequence_parallel:
            x = gather_from_sequence_parallel_region(x)
        else:
            x = copy_to_tensor_model_parallel_region(x)
        a = gather_from_tensor_model_parallel_region(F.linear(x, self.lora_a))
        return F.linear(copy_to_tensor_model_parallel_region(a), self.lora_b) * self.settings.scale

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        state = {k: v for k, v in self.state_dict(prefix="", keep_vars=True).items()}
        axes = {"lora_a": 1 if self.row_parallel else 0, "lora_b": 0}
        return make_sharded_tensors_for_checkpoint(state, prefix, axes, sharded_offsets)


class _LoraLinear:
    """Mixin over a megatron TP linear: builds the adapter, freezes the base, adds the adapter's output."""

    _row_parallel: bool
    _axis_map: dict

    def _init_lora(self, settings: LoraSettings, config) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        # megatron's linears name their full sizes input_size/output_size, TE's in_features/out_features
        in_features = getattr(self, "input_size", None) or self.in_features
        out_features = getattr(self, "output_size", None) or self.out_features
        self.adapter = LoraAdapter(in_features, out_features, settings, row_parallel=self._row_parallel,
                                   sequence_parallel=config.sequence_parallel, dtype=config.params_dtype)

    def forward(self, x, *args, **kwargs):
        out, bias = super().forward(x, *args, **kwargs)
        return out + self.adapter(x).to(out.dtype), bias

    def sharded_state_dict(self, prefix: str = "", sharded_offsets=(), metadata=None):
        own = {k: v for k, v in self.state_dict(prefix="", keep_vars=True).items() if not k.startswith("adapter.")}
        out = make_sharded_tensors_for_checkpoint(own, prefix, self._axis_map, sharded_offsets)
        out.update(self.adapter.sharded_state_dict(f"{prefix}adapter.", sharded_offsets, metadata))
        return out


def lora_linears(settings: LoraSettings, column_cls=ColumnParallelLinear, row_cls=RowParallelLinear):
    """(column, row) linear classes with LoRA, over `column_cls` / `row_cls` (megatron's, or the FP8 ones)."""

    class LoraColumnParallelLinear(_LoraLinear, column_cls):
        _row_parallel = False
        _axis_map = {"weight": 0, "bias": 0}

        def __init__(self, input_size, output_size, *, config, **kwargs):
            super().__init__(input_size, output_size, config=config, **kwargs)
            self._init_lora(settings, config)

    class LoraRowParallelLinear(_LoraLinear, row_cls):
        _row_parallel = True
        _axis_map = {"weight": 1}

        def __init__(self, input_size, output_size, *, config, **kwargs):
            super().__init__(input_size, output_size, config=config, **kwargs)
            self._init_lora(settings, config)

    return LoraColumnParallelLinear, LoraRowParallelLinear


def lora_parameters(module: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in module.named_parameters() if name.rsplit(".", 1)[-1].startswith(LORA_PREFIX)}

"""Running megatron-core's forward/backward schedule over a list of micro-batches (no pipelining, 1F1B, or
interleaved 1F1B, as parallel_state says), and bringing a last-stage value to every pipeline stage."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func


def run_schedule(forward_step, chunks: list, microbatches: list, *, forward_only: bool, seq_length: int,
                 micro_batch_size: int):
    """megatron's schedule over `microbatches`; each model chunk reads them through its own iterator. Returns
    the last stage's per-micro-batch outputs of `forward_step`'s loss function (empty on other stages)."""
    iterators = [iter(microbatches) for _ in chunks]
    return get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterators if len(iterators) > 1 else iterators[0],
        model=chunks, num_microbatches=len(microbatches), seq_length=seq_length,
        micro_batch_size=micro_batch_size, forward_only=forward_only)


def from_last_stage(value: torch.Tensor) -> torch.Tensor:
    """`value` as the last pipeline stage holds it, on every stage (in place)."""
    if parallel_state.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(value, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
    return value


def is_last_stage() -> bool:
    return parallel_state.is_pipeline_last_stage(ignore_virtual=True)

"""Llama-2 LoRA's layout on megatron-core: TP (with sequence parallel) x CP x DP, no pipeline (NVIDIA's layouts).

    init_layout(layout, seed)                    megatron's parallel_state for this layout (runtime/mcore)
    ContextParallelSdpaAttention                 the local spec's core attention (model.build_model), also under CP
    chunks = parallelize(model, config, train)   the one model chunk, DDP-wrapped (runtime/mcore)
    cp_slice(x, cp, cp_rank)                     this CP rank's part of a batch of whole sequences
    all_reduce_cp(x)                             sum over the CP group (per-sequence token counts, losses)

Context parallelism without TE (megatron's own CP is TE's ring attention): each CP rank holds two of the
sequence's 2*cp chunks, r and 2cp-1-r, so every rank has the same causal work (megatron's load balance, which
GPTModel's RoPE slicing follows); keys and values are all-gathered over the CP group (backward:
reduce-scattered) and each local query attends to the gathered keys at positions up to its own. All-gather CP
(as Llama 3's training does) rather than a ring: the same mathematics, simpler, with K/V of the whole sequence
in memory at once.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig

from models.llama2_70b_lora.config import TrainConfig
from runtime.mcore.layers import SdpaDotProductAttention
from runtime.mcore.parallelize import init_megatron, wrap_ddp
from runtime.parallel import ParallelLayout


def init_layout(layout: ParallelLayout, seed: int) -> None:
    init_megatron(layout, 1, seed)  # no pipeline, so no virtual stages


def parallelize(model: torch.nn.Module, config: TransformerConfig, t: TrainConfig) -> list:
    """The model as megatron's schedule takes it: one DDP-wrapped chunk. Only the adapters require grad, so
    only their gradients are bucketed and all-reduced (over DP x CP)."""
    return wrap_ddp([model], config, distributed_optimizer=False, grad_reduce_in_fp32=t.grad_reduce_in_fp32)


class ContextParallelSdpaAttention(SdpaDotProductAttention):
    """SDPA core attention that also runs under context parallelism (see the module docstring); with cp = 1
    it is SdpaDotProductAttention."""

    def __init__(self, config: TransformerConfig, *args, **kwargs):
        local = copy.copy(config)
        local.context_parallel_size = 1  # DotProductAttention refuses CP; this class does it itself
        super().__init__(local, *args, **kwargs)
        self.cp = config.context_parallel_size

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if self.cp == 1:
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("context-parallel SDPA attention: no packed sequences or attention bias")
        group = parallel_state.get_context_parallel_group()
        key = gather_from_sequence_parallel_region(key, group=group)
        value = gather_from_sequence_parallel_region(value, group=group)
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=2), value.repeat_interleave(groups, dim=2)
        chunk = query.shape[0] // 2
        positions = [cp_positions(r, self.cp, chunk, query.device) for r in range(self.cp)]
        allowed = positions[parallel_state.get_context_parallel_rank()][:, None] >= torch.cat(positions)[None, :]
        s, b = query.shape[0], query.shape[1]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))
        p = self.attention_dropout.p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p, scale=self.softmax_scale)
        return out.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)



def cp_positions(rank: int, cp: int, chunk: int, device) -> torch.Tensor:
    """Sequence positions of CP rank `rank`'s tokens: chunks rank and 2cp-1-rank of length `chunk`."""
    return torch.cat([torch.arange(rank * chunk, (rank + 1) * chunk, device=device),
                      torch.arange((2 * cp - 1 - rank) * chunk, (2 * cp - rank) * chunk, device=device)])


def cp_slice(x: torch.Tensor, cp: int, cp_rank: int) -> torch.Tensor:
    """CP rank `cp_rank`'s two of the 2*cp chunks of every row of `x` [batch, sequence] (r and 2cp-1-r: causal
    work balanced), as the attention above and megatron's RoPE expect them."""
    chunks = x.view(x.shape[0], 2 * cp, -1)
    return torch.cat([chunks[:, cp_rank], chunks[:, 2 * cp - 1 - cp_rank]], dim=1)


def cp_rank() -> int:
    return parallel_state.get_context_parallel_rank()


def all_reduce_cp(x: torch.Tensor) -> None:
    """Sum `x` in place over the CP group (each CP rank holds its part of every sequence)."""
    dist.all_reduce(x, group=parallel_state.get_context_parallel_group())

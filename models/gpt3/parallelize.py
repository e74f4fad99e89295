"""GPT-3's layout on megatron-core: TP (with sequence parallel) x PP (optionally interleaved) x DP, no CP (the
reference uses none); the degrees are the flavour's (models/gpt3/config.py).

    virtual_pp = init_layout(layout, cfg.train, seed)   megatron's parallel_state (runtime/mcore)
    chunks = build_model_chunks(cfg.model, config, pp_rank=..., pp=...)   this pipeline rank's GPTModels
    chunks = parallelize(chunks, config, cfg.train)      DDP-wrapped, the distributed optimizer's buffers

The pipeline split is megatron's: pipeline rank r holds one chunk of num_layers / pp layers, or with
interleaving virtual_pp chunks of num_layers / (pp * virtual_pp), chunk v holding the layers of virtual stage
v * pp + r; the embedding lives on the first stage's first chunk, the output layer and loss on the last stage's
last chunk (with the embedding tied to it, megatron all-reduces the two copies' gradients).
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from models.gpt3.config import ModelConfig, TrainConfig
from models.gpt3.model import build_model
from runtime.mcore.parallelize import init_megatron, wrap_ddp
from runtime.parallel import ParallelLayout


def virtual_stages(layout: ParallelLayout, t: TrainConfig) -> int:
    """Model chunks per pipeline rank: train.virtual_pp with a pipeline, else 1."""
    return t.virtual_pp if layout.pp > 1 else 1


def check_layout(layout: ParallelLayout, t: TrainConfig) -> int:
    """The number of micro-batches per step on this layout, after checking the layout can run it."""
    if layout.cp != 1:
        raise ValueError("gpt3: context parallel is not wired into the data path (the reference uses none)")
    if t.global_batch_size % (layout.dp * t.micro_batch_size):
        raise ValueError(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                         f"dp*micro_batch_size = {layout.dp}*{t.micro_batch_size}")
    num_microbatches = t.global_batch_size // (layout.dp * t.micro_batch_size)
    if virtual_stages(layout, t) > 1 and num_microbatches % layout.pp:
        raise ValueError(f"interleaved 1F1B needs micro-batches ({num_microbatches}) divisible by pp={layout.pp}")
    return num_microbatches


def init_layout(layout: ParallelLayout, t: TrainConfig, seed: int) -> int:
    """megatron's parallel_state for `layout`; returns the virtual pipeline stages per rank."""
    vpp = virtual_stages(layout, t)
    init_megatron(layout, vpp, seed)
    return vpp


def build_model_chunks(m: ModelConfig, config: TransformerConfig, *, pp_rank: int, pp: int,
                       use_te: bool | None = None) -> list[GPTModel]:
    """The GPTModel chunks pipeline rank `pp_rank` holds (one, or virtual_pp interleaved ones)."""
    vpp = config.virtual_pipeline_model_parallel_size or 1
    chunks = []
    for vp_stage in range(vpp):
        first = pp_rank == 0 and vp_stage == 0
        last = pp_rank == pp - 1 and vp_stage == vpp - 1
        chunks.append(build_model(m, config, pre_process=first, post_process=last,
                                  vp_stage=vp_stage if vpp > 1 else None, pp_rank=pp_rank, use_te=use_te))
    return chunks


def uses_distributed_optimizer(t: TrainConfig) -> bool:
    """ZeRO-1 sharding of the fp32 master weights and Adam moments over DP: megatron's, so CUDA only."""
    return t.distributed_optimizer and torch.cuda.is_available()


def parallelize(chunks: list[GPTModel], config: TransformerConfig, t: TrainConfig) -> list:
    """The chunks DDP-wrapped as megatron's schedules take them (gradient buckets, and with the distributed
    optimizer the parameter all-gather hooks)."""
    return wrap_ddp(chunks, config, distributed_optimizer=uses_distributed_optimizer(t),
                    grad_reduce_in_fp32=t.grad_reduce_in_fp32)

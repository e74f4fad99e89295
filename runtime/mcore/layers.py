"""megatron-core layers shared by the GPT-style models (GPT-3, Llama-2 LoRA): what replaces megatron's local
pieces with the project's kernels, and whether Transformer Engine's spec is used instead.

    te_available()             TE imports and CUDA is there (kernels/backends.py): build on TE's layer spec
    MegatronFusedLayerNorm     kernels.layer_norm.FusedLayerNorm with megatron's spec constructor
    MegatronRMSNorm            kernels.rms_norm.FusedRMSNorm, the same
    SdpaDotProductAttention    megatron's local core attention through torch SDPA (flash / memory-efficient)
    bias_dropout_add_builder   megatron's get_bias_dropout_add contract on kernels.bias_dropout_add
    KernelGPTModel             GPTModel whose LM loss is kernels.cross_entropy_parallel's vocab-parallel CE
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.transformer_config import TransformerConfig

from kernels import backends
from kernels.bias_dropout_add import bias_dropout_add
from kernels.cross_entropy_parallel import vocab_parallel_cross_entropy
from kernels.layer_norm import FusedLayerNorm
from kernels.rms_norm import FusedRMSNorm


def te_available() -> bool:
    """Transformer Engine imports and CUDA is there (kernels/backends.py): then GPT-3 is built on TE's layer
    spec, as NVIDIA's; FP8 additionally needs TE's own FP8 report (kernels.backends.te_usable(fp8=True))."""
    return backends.te_usable()


class _MegatronNorm:
    """The constructor megatron-core's specs call, (config, hidden_size, eps), over one of our fused norms."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, device="cpu" if config.use_cpu_initialization else None,
                         dtype=config.params_dtype)
        for p in self.parameters():
            # The replicated norm sees only its sequence shard under SP: megatron sums these grads over TP.
            p.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


class MegatronFusedLayerNorm(_MegatronNorm, FusedLayerNorm):
    """kernels.layer_norm.FusedLayerNorm in megatron's spec (GPT-3)."""


class MegatronRMSNorm(_MegatronNorm, FusedRMSNorm):
    """kernels.rms_norm.FusedRMSNorm in megatron's spec (Llama)."""


class SdpaDotProductAttention(DotProductAttention):
    """megatron's local core attention computed by torch.nn.functional.scaled_dot_product_attention
    (model.attention = "sdpa"). On H100 (bf16, head dim 128, causal, no mask tensor) torch runs its flash or
    memory-efficient kernel, which keeps q, k, v, the output and one fp32 log-sum-exp per row and head for
    backward; DotProductAttention keeps the s x s softmax output in fp32 and its bf16 copy. Same inputs
    ([s, b, heads, head dim] each), output ([s, b, heads * head dim]) and constructor as DotProductAttention.
    Causal attention only (GPT-3's): the causal mask is SDPA's own, the `attention_mask` tensor the local
    path passes (the same causal mask) is not read."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPA core attention: no packed sequences or attention bias")
        if (attn_mask_type or self.attn_mask_type) != AttnMaskType.causal:
            raise ValueError(f"SDPA core attention: causal masks only, got {attn_mask_type or self.attn_mask_type}")
        if self.softmax_offset is not None or self.config.window_size is not None:
            raise ValueError("SDPA core attention: no softmax offset or sliding window")
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            key, value = key.repeat_interleave(groups, dim=2), value.repeat_interleave(groups, dim=2)
        s, b = query.shape[0], query.shape[1]
        q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads, s, head dim], views
        # DotProductAttention divides its scale by the layer number under query-key layer scaling and the
        # softmax multiplies it back: the product is the scale the softmax sees.
        scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)
        p = self.attention_dropout.p if self.training else 0.0
        fork = tensor_parallel.get_cuda_rng_tracker().fork() if p > 0 and not self.config.sequence_parallel \
            else contextlib.nullcontext()  # as DotProductAttention draws its dropout
        with fork:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True, scale=scale)
        return out.permute(2, 0, 1, 3).reshape(s, b, self.hidden_size_per_partition)


def bias_dropout_add_builder(training: bool, fused: bool):
    """megatron's `get_bias_dropout_add(training, fused)` contract, on kernels.bias_dropout_add: returns
    `f((x, bias), residual, prob) -> residual + dropout(x + bias, prob)` (bias may be None; no dropout
    unless training; the residual cast to x's dtype first, as megatron does). `fused` is megatron's
    bias_dropout_fusion switch: the kernel is the fused form whatever it says."""

    def _bias_dropout_add(x_with_bias, residual: torch.Tensor, prob: float) -> torch.Tensor:
        x, bias = x_with_bias
        if residual.dtype != x.dtype:
            residual = residual.to(x.dtype)
        return bias_dropout_add(x, bias, residual, prob, training=training)

    return _bias_dropout_add


class KernelGPTModel(GPTModel):
    """GPTModel whose language-model loss is kernels.cross_entropy_parallel's vocab-parallel cross-entropy
    over the TP group, in place of megatron's tensor_parallel.vocab_parallel_cross_entropy: the same
    per-token fp32 loss (labels [b, s] and logits [s, b, V/tp] in, loss [b, s] out) from one pass over each
    rank's shard and two small all-reduces of per-row statistics; the gradient, made in the forward, is kept
    in the logits' dtype where megatron keeps an fp32 softmax. Megatron's own fused paths
    (config.cross_entropy_loss_fusion) are left as they are."""

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.config.cross_entropy_loss_fusion:
            return super().compute_language_model_loss(labels, logits)
        group = self.tp_group
        tp_size, tp_rank = torch.distributed.get_world_size(group), torch.distributed.get_rank(group)
        shard = logits.shape[-1]
        # Every label in [0, vocab) counts, as in megatron (the benchmark clamps its padding labels to 0 and
        # masks them with loss_mask). A label outside the vocabulary would give the log-sum-exp here and
        # megatron's log-sum-exp minus the row max (the kernel's ignore_index -100 gives 0): no label is.
        loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1).contiguous(), tp_rank * shard,
                                            tp_size * shard, group, reduction="none")
        return loss.transpose(0, 1).contiguous()

"""GPT-3 as megatron-core builds it: a TransformerConfig, a layer spec, and one GPTModel per pipeline chunk.

    config = transformer_config(cfg.model, cfg.train, tp=..., pp=..., cp=...)
    chunks = build_model_chunks(cfg.model, config, pp_rank=..., pp=..., virtual_pp=...)

The spec is Transformer Engine's when it imports (fused LayerNorm+GEMM, FP8, sequence parallel); otherwise
megatron-core's local spec (with FP8 layer GEMMs through torch._scaled_mm for precision "fp8":
runtime/mcore/fp8_linear.py) and our `kernels.layer_norm.FusedLayerNorm` in place of its torch LayerNorm
wrapper (that wrapper refuses sequence parallel; ours marks its parameters so megatron all-reduces their
gradients over the TP group, which is what sequence parallel needs of a norm). The local spec's
bias-dropout-adds are `kernels.bias_dropout_add` (`bias_dropout_add_builder`), and without TE the language-model
loss is `kernels.cross_entropy_parallel`'s vocab-parallel cross-entropy (`KernelGPTModel`); both run their
Triton kernels on CUDA and their torch references elsewhere (MLPERF_KERNELS, kernels/dispatch.py).

GPT-3 175B: 96 layers, d_model 12288, 96 heads, FFN 4x, sequence 2048, learned absolute positions,
pre-LN (eps 1e-5), GeLU, dropout 0, init std 0.006 without the 1/sqrt(2L) output-layer scaling, no
query-key layer scaling, embeddings tied to the output layer.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend, AttnMaskType
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from kernels import backends
from kernels.bias_dropout_add import bias_dropout_add
from kernels.cross_entropy_parallel import vocab_parallel_cross_entropy
from kernels.layer_norm import FusedLayerNorm
from models.gpt3.config import ModelConfig, TrainConfig


def te_available() -> bool:
    """Transformer Engine imports and CUDA is there (kernels/backends.py): then GPT-3 is built on TE's layer
    spec, as NVIDIA's; FP8 additionally needs TE's own FP8 report (kernels.backends.te_usable(fp8=True))."""
    return backends.te_usable()


class MegatronFusedLayerNorm(FusedLayerNorm):
    """FusedLayerNorm with the constructor megatron-core's specs call: (config, hidden_size, eps)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5):
        super().__init__(hidden_size, eps=eps, device="cpu" if config.use_cpu_initialization else None,
                         dtype=config.params_dtype)
        for p in self.parameters():
            # The replicated norm sees only its sequence shard under SP: megatron sums these grads over TP.
            p.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)


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


ATTENTION = {"local": DotProductAttention, "sdpa": SdpaDotProductAttention}


def layer_spec(model_cfg: ModelConfig, use_te: bool | None = None):
    """megatron's TE layer spec when TE is usable (use_te=None asks te_available()), else the local spec with
    our kernels."""
    use_te = te_available() if use_te is None else use_te
    if model_cfg.attention not in ATTENTION:
        raise ValueError(f"model.attention={model_cfg.attention!r}: expected one of {sorted(ATTENTION)}")
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec()
    spec = get_gpt_layer_local_spec()
    spec.submodules.self_attention.submodules.core_attention = ATTENTION[model_cfg.attention]
    spec.submodules.self_attn_bda = bias_dropout_add_builder
    spec.submodules.mlp_bda = bias_dropout_add_builder
    if model_cfg.fused_norm:
        spec.submodules.input_layernorm = MegatronFusedLayerNorm
        spec.submodules.pre_mlp_layernorm = MegatronFusedLayerNorm
    if model_cfg.precision == "fp8":  # no TE: the layer GEMMs through torch._scaled_mm (runtime/mcore/fp8_linear.py)
        from runtime.mcore.fp8_linear import fp8_layer_spec

        spec = fp8_layer_spec(spec)
    return spec


def block_spec(model_cfg: ModelConfig, config: TransformerConfig, use_te: bool, vp_stage, pp_rank: int):
    """The layer spec, or for the local spec with our norm a block spec whose final norm is ours too
    (megatron would otherwise build its torch LayerNorm wrapper there, which refuses sequence parallel)."""
    spec = layer_spec(model_cfg, use_te)
    if use_te or not model_cfg.fused_norm:
        return spec
    layers = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(
        layer_specs=[spec] * layers, layer_norm=MegatronFusedLayerNorm))


def transformer_config(m: ModelConfig, t: TrainConfig, *, tp: int, pp: int, cp: int = 1,
                       use_te: bool | None = None) -> TransformerConfig:
    use_te = te_available() if use_te is None else use_te
    on_cpu = not torch.cuda.is_available()
    if m.precision not in ("fp32", "bf16", "fp8"):
        raise ValueError(f"model.precision={m.precision!r}: expected fp32, bf16 or fp8")
    if t.sequence_parallel and tp > 1 and not (use_te or m.fused_norm):
        raise ValueError("train.sequence_parallel needs TE or model.fused_norm (megatron's torch norm refuses it)")
    if t.recompute not in ("none", "selective", "full"):
        raise ValueError(f"train.recompute={t.recompute!r}: expected none, selective or full")
    if t.recompute == "full" and t.recompute_method not in ("uniform", "block"):
        raise ValueError(f"train.recompute_method={t.recompute_method!r}: expected uniform or block")
    bf16 = m.precision in ("bf16", "fp8")
    vpp = t.virtual_pp if pp > 1 and t.virtual_pp > 1 else None
    if vpp and m.num_layers % (pp * vpp):
        raise ValueError(f"num_layers={m.num_layers} is not divisible by pp*virtual_pp={pp}*{vpp}")
    if m.num_layers % pp:
        raise ValueError(f"num_layers={m.num_layers} is not divisible by pp={pp}")
    kwargs = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
        ffn_hidden_size=m.ffn_hidden_size, layernorm_epsilon=m.layernorm_epsilon,
        init_method_std=m.init_method_std, hidden_dropout=0.0, attention_dropout=0.0,
        apply_query_key_layer_scaling=False, apply_residual_connection_post_layernorm=False,
        normalization="LayerNorm", gated_linear_unit=False, activation_func=torch.nn.functional.gelu,
        add_bias_linear=True, bias_activation_fusion=False, bias_dropout_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        virtual_pipeline_model_parallel_size=vpp, sequence_parallel=t.sequence_parallel and tp > 1,
        bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32, autocast_dtype=None,
        use_cpu_initialization=on_cpu, perform_initialization=True,
        # Batched p2p posts a stage's sends and receives in one fixed order; with pp=2 both neighbours are
        # the same rank, and gloo pairs same-peer messages in posting order, so under interleaving an
        # activation and a gradient swap places. The unbatched path orders ops by rank parity instead.
        batch_p2p_comm=not on_cpu,
        attention_backend=AttnBackend.auto if use_te else AttnBackend.local,
        # No scaled init: GPT-3's reference uses std 0.006 for every layer, output projections included.
        output_layer_init_method=None,
    )
    if t.recompute == "selective":
        kwargs.update(recompute_granularity="selective")
    elif t.recompute == "full":
        chunk_layers = m.num_layers // pp // (vpp or 1)
        if not 1 <= t.recompute_num_layers <= chunk_layers:
            raise ValueError(f"train.recompute_num_layers={t.recompute_num_layers}: expected 1..{chunk_layers}, "
                             "the layers of one model chunk")
        kwargs.update(recompute_granularity="full", recompute_method=t.recompute_method,
                      recompute_num_layers=t.recompute_num_layers)
    if m.precision == "fp8":
        # TE reads the recipe from these fields; without TE, runtime/mcore/fp8_linear.py reads the same ones.
        kwargs.update(fp8_amax_history_len=m.fp8_amax_history_len, fp8_amax_compute_algo="max")
        if use_te:
            kwargs.update(fp8="hybrid")
    if use_te and torch.cuda.is_available():
        # TE's layers fuse bias+GeLU, bias+residual and the wgrad accumulation into fp32 main_grad.
        kwargs.update(bias_activation_fusion=True, bias_dropout_fusion=True, gradient_accumulation_fusion=True)
    config = TransformerConfig(**kwargs)
    # Megatron scales the output-layer init by 1/sqrt(2*num_layers) unless told otherwise; GPT-3 does not.
    config.output_layer_init_method = config.init_method
    return config


def build_model_chunks(m: ModelConfig, config: TransformerConfig, *, pp_rank: int, pp: int,
                       use_te: bool | None = None) -> list[GPTModel]:
    """The GPTModel chunks this pipeline rank holds (one, or virtual_pp interleaved ones)."""
    use_te = te_available() if use_te is None else use_te
    vpp = config.virtual_pipeline_model_parallel_size or 1
    chunks = []
    for vp_stage in range(vpp):
        first = pp_rank == 0 and vp_stage == 0
        last = pp_rank == pp - 1 and vp_stage == vpp - 1
        spec = block_spec(m, config, use_te, vp_stage if vpp > 1 else None, pp_rank)
        model_cls = GPTModel if use_te else KernelGPTModel  # TE's path as megatron builds it
        model = model_cls(config=config, transformer_layer_spec=spec,
                          vocab_size=m.padded_vocab_size(config.tensor_model_parallel_size),
                          max_sequence_length=m.seq_length, pre_process=first, post_process=last,
                          share_embeddings_and_output_weights=m.share_embeddings_and_output_weights,
                          position_embedding_type="learned_absolute", parallel_output=True,
                          vp_stage=vp_stage if vpp > 1 else None)
        chunks.append(model)
    return chunks

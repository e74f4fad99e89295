"""Llama 2 on megatron-core's GPTModel, with LoRA on the fused QKV and the attention output projection.

Llama 2: pre-RMSNorm (eps 1e-5), rotary position embeddings on every head dimension (base 10000, the
rotate-half convention HF's checkpoints use: megatron's non-interleaved RoPE), grouped-query attention
(megatron's num_query_groups), SwiGLU MLP (gated linear unit with SiLU; megatron's fc1 holds [gate; up]
per TP shard), no biases, untied input embedding and output layer, no dropout in the base.

Megatron's local (non-TE) spec, with our pieces: kernels.rms_norm's RMSNorm with megatron's constructor (it
marks its weight for SP's TP grad all-reduce, which megatron's torch norm wrapper refuses to do), torch SDPA
core attention (models/gpt3/model.py: no s x s scores at 8192 tokens; the benchmark passes the subclass that
also runs under context parallelism, models/llama2_70b_lora/parallelize.py), the vocab-parallel cross-entropy
kernel (KernelGPTModel), and the LoRA linears of models/llama2_70b_lora/lora.py over megatron's TP linears or,
with precision fp8 and no TE, over FP8-stored frozen linears (models/llama2_70b_lora/fp8_frozen.py: the base
cast to e4m3 once after loading, `store_base_in_fp8`). The base is frozen: only
the adapters' parameters require grad. With TE importable (CUDA), TE's spec with the same adapters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from models.llama2_70b_lora.config import ModelConfig, TrainConfig
from models.llama2_70b_lora.lora import LoraSettings, lora_linears
from runtime.mcore.layers import (
    KernelGPTModel,
    MegatronRMSNorm,
    SdpaDotProductAttention,
    bias_dropout_add_builder,
    te_available,
)


def lora_settings(m: ModelConfig) -> LoraSettings:
    return LoraSettings(rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout)


def layer_spec(m: ModelConfig, use_te: bool, core_attention=SdpaDotProductAttention) -> ModuleSpec:
    """TE's layer spec with the adapters, or the local one with our kernels and `core_attention` (the layout's:
    SdpaDotProductAttention refuses context parallelism)."""
    if use_te:
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TENorm, TERowParallelLinear
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        spec = get_gpt_layer_with_transformer_engine_spec()  # TE's norms read config.normalization (RMSNorm)
        # TE's spec fuses the input norm into the QKV GEMM; the adapter needs the normed input, so the norm
        # stands alone (TENorm) and the QKV is TE's plain column-parallel linear under the adapter.
        spec.submodules.input_layernorm = TENorm
        column, row = lora_linears(lora_settings(m), TEColumnParallelLinear, TERowParallelLinear)
        attn = spec.submodules.self_attention.submodules
        attn.linear_qkv, attn.linear_proj = column, row
        return spec
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = core_attention
    spec.submodules.self_attn_bda = bias_dropout_add_builder
    spec.submodules.mlp_bda = bias_dropout_add_builder
    spec.submodules.input_layernorm = MegatronRMSNorm
    spec.submodules.pre_mlp_layernorm = MegatronRMSNorm
    if m.precision == "fp8":  # no TE: the frozen base stored in FP8, its GEMMs through torch._scaled_mm
        from models.llama2_70b_lora.fp8_frozen import (
            StoredFp8ColumnParallelLinear,
            StoredFp8RowParallelLinear,
            stored_fp8_layer_spec,
        )

        spec = stored_fp8_layer_spec(spec)
        column, row = lora_linears(lora_settings(m), StoredFp8ColumnParallelLinear, StoredFp8RowParallelLinear)
    else:
        column, row = lora_linears(lora_settings(m))
    attn = spec.submodules.self_attention.submodules
    attn.linear_qkv, attn.linear_proj = column, row
    return spec


def block_spec(m: ModelConfig, use_te: bool, core_attention=SdpaDotProductAttention):
    spec = layer_spec(m, use_te, core_attention)
    if use_te:
        return spec
    # Our norm for the final norm too (megatron would build its torch wrapper there, which refuses SP).
    return ModuleSpec(module=TransformerBlock, submodules=TransformerBlockSubmodules(
        layer_specs=[spec] * m.num_layers, layer_norm=MegatronRMSNorm))


def transformer_config(m: ModelConfig, t: TrainConfig, *, tp: int, pp: int = 1, cp: int = 1,
                       use_te: bool | None = None) -> TransformerConfig:
    use_te = te_available() if use_te is None else use_te
    on_cpu = not torch.cuda.is_available()
    if m.precision not in ("fp32", "bf16", "fp8"):
        raise ValueError(f"model.precision={m.precision!r}: expected fp32, bf16 or fp8")
    if pp != 1:
        raise ValueError(f"parallel.pp={pp}: this benchmark runs without pipeline parallelism (NVIDIA's layouts "
                         "are TP x CP x DP)")
    if cp > 1 and m.seq_length % (2 * cp):
        raise ValueError(f"model.seq_length={m.seq_length} is not divisible by 2*cp = {2 * cp} (CP's chunks)")
    if m.num_attention_heads % m.num_query_groups:
        raise ValueError(f"model.num_attention_heads={m.num_attention_heads} is not a multiple of "
                         f"num_query_groups={m.num_query_groups}")
    for name, value in (("num_query_groups", m.num_query_groups), ("vocab_size", m.vocab_size),
                        ("ffn_hidden_size", m.ffn_hidden_size), ("lora_rank", m.lora_rank)):
        if value % tp:
            raise ValueError(f"model.{name}={value} is not divisible by parallel.tp={tp}")
    bf16 = m.precision in ("bf16", "fp8")
    kwargs = dict(
        num_layers=m.num_layers, hidden_size=m.hidden_size, num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups, ffn_hidden_size=m.ffn_hidden_size, layernorm_epsilon=m.rms_norm_eps,
        normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False,
        hidden_dropout=0.0, attention_dropout=0.0, apply_query_key_layer_scaling=False,
        bias_activation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False,
        persist_layer_norm=False, gradient_accumulation_fusion=False, apply_rope_fusion=False,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, context_parallel_size=cp,
        sequence_parallel=t.sequence_parallel and tp > 1,
        bf16=bf16, params_dtype=torch.bfloat16 if bf16 else torch.float32,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32, autocast_dtype=None,
        use_cpu_initialization=on_cpu, perform_initialization=True, batch_p2p_comm=not on_cpu,
        attention_backend=AttnBackend.auto if use_te else AttnBackend.local,
    )
    if m.precision == "fp8":
        kwargs.update(fp8_amax_history_len=m.fp8_amax_history_len, fp8_amax_compute_algo="max")
        if use_te:
            kwargs.update(fp8="hybrid")
    if use_te and torch.cuda.is_available():
        kwargs.update(bias_activation_fusion=True, apply_rope_fusion=True)
    return TransformerConfig(**kwargs)


def build_model(m: ModelConfig, config: TransformerConfig, use_te: bool | None = None,
                core_attention=SdpaDotProductAttention) -> GPTModel:
    """The whole model (one pipeline stage): base weights frozen, LoRA adapters trainable."""
    use_te = te_available() if use_te is None else use_te
    model_cls = GPTModel if use_te else KernelGPTModel  # TE's path as megatron builds it
    model = model_cls(config=config, transformer_layer_spec=block_spec(m, use_te, core_attention),
                      vocab_size=m.vocab_size, max_sequence_length=m.seq_length, pre_process=True, post_process=True,
                      share_embeddings_and_output_weights=False, position_embedding_type="rope",
                      rotary_percent=1.0, rotary_base=int(m.rope_theta), parallel_output=True)
    for name, p in model.named_parameters():
        p.requires_grad_(".adapter.lora_" in name)
    return model

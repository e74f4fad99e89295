"""GPT-3 as megatron-core builds it: a TransformerConfig, a layer spec, and a GPTModel (or one pipeline chunk).

    config = transformer_config(cfg.model, cfg.train, tp=..., pp=..., cp=...)
    model = build_model(cfg.model, config)       # or one pipeline chunk: models/gpt3/parallelize.py

The spec is Transformer Engine's when it imports (fused LayerNorm+GEMM, FP8, sequence parallel); otherwise
megatron-core's local spec (with FP8 layer GEMMs through torch._scaled_mm for precision "fp8":
runtime/mcore/fp8_linear.py) and our `kernels.layer_norm.FusedLayerNorm` in place of its torch LayerNorm
wrapper (that wrapper refuses sequence parallel; ours marks its parameters so megatron all-reduces their
gradients over the TP group, which is what sequence parallel needs of a norm). The local spec's
bias-dropout-adds are `kernels.bias_dropout_add` (`bias_dropout_add_builder`), and without TE the language-model
loss is `kernels.cross_entropy_parallel`'s vocab-parallel cross-entropy (`KernelGPTModel`); both run their
Triton kernels on CUDA and their torch references elsewhere (MLPERF_KERNELS, kernels/dispatch.py). Those
layers live in runtime/mcore/layers.py, shared with Llama-2 LoRA.

GPT-3 175B: 96 layers, d_model 12288, 96 heads, FFN 4x, sequence 2048, learned absolute positions,
pre-LN (eps 1e-5), GeLU, dropout 0, init std 0.006 without the 1/sqrt(2L) output-layer scaling, no
query-key layer scaling, embeddings tied to the output layer.
"""

from __future__ import annotations

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlock,
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_config import TransformerConfig

from models.gpt3.config import ModelConfig, TrainConfig
from runtime.mcore.layers import (
    KernelGPTModel,
    MegatronFusedLayerNorm,
    SdpaDotProductAttention,
    bias_dropout_add_builder,
    te_available,
)

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


def build_model(m: ModelConfig, config: TransformerConfig, *, pre_process: bool = True, post_process: bool = True,
                vp_stage: int | None = None, pp_rank: int = 0, use_te: bool | None = None) -> GPTModel:
    """One GPTModel: the whole network, or the pipeline chunk (pipeline rank `pp_rank`, virtual stage `vp_stage`)
    that models/gpt3/parallelize.py asks for; `pre_process` holds the embedding, `post_process` the output layer
    and loss."""
    use_te = te_available() if use_te is None else use_te
    spec = block_spec(m, config, use_te, vp_stage, pp_rank)
    model_cls = GPTModel if use_te else KernelGPTModel  # TE's path as megatron builds it
    return model_cls(config=config, transformer_layer_spec=spec,
                     vocab_size=m.padded_vocab_size(config.tensor_model_parallel_size),
                     max_sequence_length=m.seq_length, pre_process=pre_process, post_process=post_process,
                     share_embeddings_and_output_weights=m.share_embeddings_and_output_weights,
                     position_embedding_type="learned_absolute", parallel_output=True, vp_stage=vp_stage)

"""A random Llama base model in the HF checkpoint layout, for the debug flavour (`python -m runtime.synthesize`).

HF's own initialisation (normal, std 0.02, for every projection and the embeddings; RMSNorm weights 1;
the output layer wider, OUTPUT_STD),
stored as the MLPerf model stores it: fused `qkv_proj` rows [q; k; v], two safetensors shards with an index
and config.json; read back by hf_checkpoint.load_hf_checkpoint like the real 70B directory.
"""

from __future__ import annotations

import torch

from models.llama2_70b_lora.hf_checkpoint import hf_config, write_hf_checkpoint

INIT_STD = 0.02
# The output layer as a trained model's spans logits of several nats; at HF's from-scratch std 0.02 a
# 64-wide model's logits cannot spread by more than about 2.5 (its input is RMS-normalised), which would
# floor the loss of any adapter above the target.
OUTPUT_STD = 0.3


def synthetic_base_tensors(m, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    d = m.hidden_size // m.num_attention_heads

    def normal(*shape):
        return torch.randn(*shape, generator=g) * INIT_STD

    h, f = m.hidden_size, m.ffn_hidden_size
    out = {"model.embed_tokens.weight": normal(m.vocab_size, h),
           "lm_head.weight": normal(m.vocab_size, h) * (OUTPUT_STD / INIT_STD), "model.norm.weight": torch.ones(h)}
    for i in range(m.num_layers):
        p = f"model.layers.{i}"
        out.update({f"{p}.input_layernorm.weight": torch.ones(h),
                    f"{p}.post_attention_layernorm.weight": torch.ones(h),
                    f"{p}.self_attn.q_proj.weight": normal(m.num_attention_heads * d, h),
                    f"{p}.self_attn.k_proj.weight": normal(m.num_query_groups * d, h),
                    f"{p}.self_attn.v_proj.weight": normal(m.num_query_groups * d, h),
                    f"{p}.self_attn.o_proj.weight": normal(h, h),
                    f"{p}.mlp.gate_proj.weight": normal(f, h), f"{p}.mlp.up_proj.weight": normal(f, h),
                    f"{p}.mlp.down_proj.weight": normal(h, f)})
    return out


def write_synthetic_base(m, directory: str, seed: int) -> None:
    write_hf_checkpoint(directory, synthetic_base_tensors(m, seed), hf_config(m), shards=2, fused_qkv=True)

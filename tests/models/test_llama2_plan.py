"""The Llama-2 LoRA planner against independent counts: HF's LlamaForCausalLM built on the meta device from
Llama-2-70B's config, the spec's LoRA parameter count, and memory / FLOPs worked by hand for dgxh100_1x8."""

from __future__ import annotations

import os

import pytest
import torch

from models.llama2_70b_lora.config import FLAVOURS, dgxh100_1x8, dgxh100_8x8
from models.llama2_70b_lora.plan import USABLE_GIB, achieved, base_params, lora_params, plan

os.environ.setdefault("HF_HUB_OFFLINE", "1")
GIB = 1024 ** 3


def test_parameter_counts_are_hf_llama2_70b_and_the_spec_lora():
    from transformers import LlamaConfig, LlamaForCausalLM

    m = dgxh100_1x8().model
    config = LlamaConfig(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                         num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    assert base_params(m) == sum(p.numel() for p in hf.parameters()) == 68_976_648_192
    assert lora_params(m) == 80 * 16 * ((8192 + 10240) + (8192 + 8192)) == 44_564_480  # the spec's count


def test_dgxh100_1x8_memory_and_flops_by_hand():
    p = plan(dgxh100_1x8(), 8, "fp8")
    layer_gemm = 8192 * 10240 + 8192 * 8192 + 3 * 8192 * 28672  # QKV, proj, gate + up, down
    # TP 4: FP8 GEMM weights 1 B, embeddings + output layer and the 161 norms in bf16
    weights = 80 * layer_gemm // 4 + 2 * (2 * 32000 * 8192 // 4 + 161 * 8192)
    assert p.memory_gib["base weights"] == pytest.approx(weights / GIB, rel=1e-12)
    assert p.memory_gib["lora state"] == pytest.approx(18 * 44_564_480 / 4 / GIB, rel=1e-12)
    per_token = (80 * (2 * layer_gemm + 4 * 8192 * 8192) + 2 * 32000 * 8192  # forward
                 + 80 * (2 * layer_gemm + 8 * 8192 * 8192) + 2 * 32000 * 8192)  # backward, input grads only
    assert p.flops_per_step == pytest.approx(8 * 8192 * per_token + 6 * 44_564_480 * 8 * 8192, rel=1e-12)
    assert p.total_gib < USABLE_GIB["H100"]
    tflops, mfu = achieved(p, 8, 4.4, "H100", "fp8")
    assert tflops == pytest.approx(p.flops_per_step / 4.4 / 8 / 1e12) and 0.2 < mfu < 0.5


def test_the_real_flavours_fit_and_tp2_needs_an_h200():
    assert plan(dgxh100_1x8(), 8).total_gib < USABLE_GIB["H100"]
    # without FP8 parameter storage (TE's, or fp8_frozen.py's) the 8-GPU layout does not fit an H100: bf16
    # weights, or bf16 plus the FP8 copies runtime/mcore/fp8_linear.py saves, add 16 and 32 GiB of weights
    for weights, extra in (("bf16", 1), ("local_fp8", 2)):
        p = plan(dgxh100_1x8(), 8, weights)
        layer_gemm = 8192 * 10240 + 8192 * 8192 + 3 * 8192 * 28672
        assert p.memory_gib["base weights"] - plan(dgxh100_1x8(), 8).memory_gib["base weights"] == \
            pytest.approx(extra * 80 * layer_gemm / 4 / GIB, rel=1e-12)
        assert p.total_gib > USABLE_GIB["H100"]
    assert plan(dgxh100_8x8(), 64).total_gib < USABLE_GIB["H100"]
    tp2 = dgxh100_1x8()
    tp2.parallel.tp = 2  # NVIDIA's 8 x H200 layout: too large for 80 GB, fits 141 GB
    assert USABLE_GIB["H100"] < plan(tp2, 8).total_gib < USABLE_GIB["H200"]
    # context parallelism halves the tokens each GPU holds activations for
    cp1 = dgxh100_8x8()
    cp1.parallel.cp = 1
    assert plan(dgxh100_8x8(), 64).memory_gib["activations"] < 0.6 * plan(cp1, 32).memory_gib["activations"]
    with pytest.raises(ValueError, match=r"world size 6 is not divisible by tp\*cp\*pp = 4"):
        plan(dgxh100_1x8(), 6)
    assert set(FLAVOURS) == {"debug", "dgxh100_1x8", "dgxh100_8x8"}

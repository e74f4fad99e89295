"""Our Llama 2 + LoRA in one process: the adapted model starts equal to the base (HF's LlamaForCausalLM on the
same checkpoint), only the adapters train, and with precision fp8 the frozen base is stored in e4m3 and its
GEMMs run in FP8 (models/llama2_70b_lora/fp8_frozen.py) under the same adapters."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from models.llama2_70b_lora.config import TrainConfig, debug
from models.llama2_70b_lora.fp8_frozen import store_base_in_fp8
from models.llama2_70b_lora.hf_checkpoint import hf_config, load_hf_checkpoint, write_hf_checkpoint
from models.llama2_70b_lora.model import build_model, transformer_config
from models.llama2_70b_lora.synthetic_base import synthetic_base_tensors
from runtime.mcore.parallelize import destroy_megatron, init_megatron
from runtime.parallel import ParallelLayout

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    m = debug().model
    path = tmp_path_factory.mktemp("llama2_base") / "hf"
    write_hf_checkpoint(str(path), synthetic_base_tensors(m, seed=11), hf_config(m))
    return path


def _ours(m, path):
    init_megatron(ParallelLayout(1, 0), 1, seed=0)
    model = build_model(m, transformer_config(m, TrainConfig(sequence_parallel=False), tp=1))
    load_hf_checkpoint(str(path), model, m, tp=1, tp_rank=0)
    return model.eval()


def test_adapted_model_starts_equal_to_the_base_and_only_adapters_train(base_dir):
    from transformers import LlamaForCausalLM

    m = debug().model
    ours = _ours(m, base_dir)
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_length), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            logits = ours(tokens, None, None)
        hf = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32).eval()
        with torch.no_grad():
            reference = hf(input_ids=tokens).logits
        assert (logits - reference).abs().max() <= 1e-5 * reference.abs().max()
        trainable = {n for n, p in ours.named_parameters() if p.requires_grad}
        assert trainable == {f"decoder.layers.{i}.self_attention.{lin}.adapter.lora_{x}"
                             for i in range(m.num_layers) for lin in ("linear_qkv", "linear_proj") for x in "ab"}
        for layer in ours.decoder.layers:
            for linear in (layer.self_attention.linear_qkv, layer.self_attention.linear_proj):
                assert linear.adapter.lora_b.abs().max() == 0 and linear.adapter.lora_a.abs().max() > 0
                assert linear.adapter.settings.scale == 2.0  # alpha 32 / rank 16
    finally:
        destroy_megatron()


def test_fp8_base_gemms_under_the_adapters(base_dir):
    from runtime.mcore.fp8_linear import Fp8ColumnParallelLinear, Fp8RowParallelLinear

    m = debug().model
    tokens = torch.randint(0, m.vocab_size, (2, m.seq_length), generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            exact = _ours(m, base_dir)(tokens, None, None)
        fp8 = _ours(replace(m, precision="fp8"), base_dir)
        assert store_base_in_fp8(fp8) == 4 * m.num_layers
        attn = fp8.decoder.layers[0].self_attention
        assert isinstance(attn.linear_qkv, Fp8ColumnParallelLinear) and hasattr(attn.linear_qkv, "adapter")
        assert isinstance(attn.linear_proj, Fp8RowParallelLinear) and hasattr(attn.linear_proj, "adapter")
        # the base's GEMM weights held in e4m3 (1 byte each), no bf16 copy left among the parameters
        stored = [b for n, b in fp8.named_buffers() if n.endswith(".weight")]
        assert len(stored) == 4 * m.num_layers and all(b.dtype == torch.float8_e4m3fn for b in stored)
        assert not [n for n, p in fp8.named_parameters() if "linear_" in n and "adapter" not in n]
        with torch.no_grad():
            approx = fp8(tokens.clone(), None, None)
        # e4m3 carries 3 mantissa bits: a few percent on the logits, nowhere near their spread
        assert (approx.float() - exact).abs().max() < 0.1 * exact.abs().max()
        fp8.train()
        per_token = fp8(tokens, None, None, labels=torch.roll(tokens, -1, 1))
        per_token.mean().backward()
        grads = [p.grad for n, p in fp8.named_parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    finally:
        destroy_megatron()


def test_context_parallel_split_balances_the_causal_work():
    """parallelize.py's CP split: with cp=2 a 8-token row is chunks [0,1] [2,3] [4,5] [6,7]; rank 0 holds the
    first and last, rank 1 the middle two (hand-computed), and the attention's positions say the same."""
    from models.llama2_70b_lora.parallelize import cp_positions, cp_slice

    row = torch.arange(8).view(1, 8) * 10
    assert cp_slice(row, 2, 0).tolist() == [[0, 10, 60, 70]]
    assert cp_slice(row, 2, 1).tolist() == [[20, 30, 40, 50]]
    for rank in range(2):
        assert (cp_slice(row, 2, rank)[0] // 10).tolist() == cp_positions(rank, 2, 2, "cpu").tolist()
    # every position exactly once over the ranks
    assert sorted(torch.cat([cp_positions(r, 4, 3, "cpu") for r in range(4)]).tolist()) == list(range(24))

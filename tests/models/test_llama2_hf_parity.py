"""Our Llama 2 + LoRA on megatron-core against HF transformers' LlamaForCausalLM and PEFT's LoRA.

A small GQA Llama built from its config by transformers and saved by it (safetensors) is the checkpoint; the
worker (tests/models/llama2_hf_worker.py) loads it, and its fused-qkv rewrite, into our model at TP 1 and TP 2
(gloo, two processes; SP on and off) and compares logits, the HF Trainer's loss and every LoRA gradient with
HF + PEFT given the same adapter weights.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from conftest import spawn_ranks

from models.llama2_70b_lora.hf_checkpoint import write_hf_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
WORKER = os.path.join(os.path.dirname(__file__), "llama2_hf_worker.py")


@pytest.fixture(scope="module")
def hf_checkpoints(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama2_hf")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=0.1)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # HF initialises norms to 1: make them count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    model.save_pretrained(root / "hf", safe_serialization=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hf_cfg = json.loads((root / "hf" / "config.json").read_text())
    write_hf_checkpoint(str(root / "fused"), state, hf_cfg, shards=3, fused_qkv=True)
    return root / "hf", root / "fused"


def _run(ranks: int, hf_dir, fused_dir, sequence_parallel: bool) -> list[dict]:
    procs = spawn_ranks(ranks, [sys.executable, WORKER, str(hf_dir), str(fused_dir), "1" if sequence_parallel else "0"])
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-3000:] for o in outs)
    return [json.loads(line.split("RESULT ", 1)[1]) for o in outs for line in o.splitlines()
            if line.startswith("RESULT ")]


@pytest.mark.parametrize("ranks,sequence_parallel", [(1, False), (2, False), (2, True)],
                         ids=["tp1", "tp2", "tp2_sp"])
def test_logits_loss_and_lora_gradients_match_hf_and_peft(hf_checkpoints, ranks, sequence_parallel):
    results = _run(ranks, *hf_checkpoints, sequence_parallel)
    assert len(results) == ranks
    for r in results:
        # fp32 throughout; the two differ in summation order (fused QKV GEMM, SDPA vs eager attention)
        assert r["logits"] <= 1e-5 * max(1.0, r["logits_scale"]), r
        assert r["logits_fused"] <= 1e-5 * max(1.0, r["logits_scale"]), r
        assert r["loss"] == pytest.approx(r["hf_loss"], rel=1e-5), r
        assert r["grad_scale"] > 1e-4 and r["grad"] <= 1e-4 * r["grad_scale"], r
        assert r["base_grads"] == 0, r  # the base is frozen: no gradient reaches it

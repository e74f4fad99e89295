"""GPT-3 model and schedule pieces: the 175B shape, the closed LR rules, the resumed cosine schedule, the shim."""

import math
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from runtime.mcore import cpu_shim
from models.gpt3.benchmark import cosine_lr
from models.gpt3.config import allowed_learning_rates, closed_learning_rate, debug, dgxh100_64x8
from models.gpt3.model import transformer_config


def test_175b_transformer_config_matches_the_spec():
    cfg = dgxh100_64x8()
    cfg.model.precision = "bf16"  # fp8 needs TE on a GPU
    c = transformer_config(cfg.model, cfg.train, tp=4, pp=8, use_te=False)
    assert (c.num_layers, c.hidden_size, c.num_attention_heads, c.ffn_hidden_size) == (96, 12288, 96, 49152)
    assert c.hidden_dropout == c.attention_dropout == 0.0 and c.layernorm_epsilon == 1e-5
    assert c.activation_func is torch.nn.functional.gelu and not c.gated_linear_unit
    assert not c.apply_query_key_layer_scaling and c.sequence_parallel
    assert c.virtual_pipeline_model_parallel_size == 4 and c.bf16
    assert c.output_layer_init_method is c.init_method  # std 0.006 everywhere, no 1/sqrt(2L) scaling
    w = torch.empty(4000, 1000)
    c.output_layer_init_method(w)
    assert w.std().item() == pytest.approx(0.006, rel=0.02)
    assert cfg.model.padded_vocab_size(8) == 51200 and cfg.model.padded_vocab_size(4) == 50688


def test_fp8_without_transformer_engine_uses_torch_fp8_gemms_in_the_layers():
    from runtime.mcore.fp8_linear import Fp8ColumnParallelLinear, Fp8RowParallelLinear
    from models.gpt3.model import layer_spec

    cfg = dgxh100_64x8()
    c = transformer_config(cfg.model, cfg.train, tp=4, pp=8, use_te=False)
    assert c.fp8 is None and c.bf16  # TE's switch stays off; its recipe fields are what ours reads
    assert (c.fp8_amax_history_len, c.fp8_amax_compute_algo) == (1024, "max")
    spec = layer_spec(cfg.model, use_te=False)
    attn, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    assert (attn.linear_qkv, attn.linear_proj) == (Fp8ColumnParallelLinear, Fp8RowParallelLinear)
    assert (mlp.linear_fc1, mlp.linear_fc2) == (Fp8ColumnParallelLinear, Fp8RowParallelLinear)


def test_closed_learning_rate_table():
    assert closed_learning_rate(1536) == closed_learning_rate(3072) == 2e-5
    assert closed_learning_rate(3584) == 2e-5 and closed_learning_rate(3600) == 3e-5  # NVIDIA's rule
    assert allowed_learning_rates(3500) == (2e-5, 3e-5)
    assert closed_learning_rate(8192) == 3e-5 and allowed_learning_rates(4096) == (3e-5,)


def test_schedule_resumes_at_the_checkpoint_step():
    gbs, base = 2304, 2e-5
    warmup, decay, init = (math.ceil(n * 1536 / gbs) for n in (265, 108_600, 4000))
    assert (warmup, decay, init) == (177, 72_400, 2667)
    lr = cosine_lr(init, base_lr=base, min_lr=0.1 * base, warmup_steps=warmup, decay_steps=decay)
    ratio = (init - warmup) / (decay - warmup)
    assert lr == pytest.approx(0.1 * base + 0.5 * (1 + math.cos(math.pi * ratio)) * 0.9 * base)
    assert cosine_lr(warmup // 2, base_lr=base, min_lr=0.1 * base, warmup_steps=warmup,
                     decay_steps=decay) == pytest.approx(base * (warmup // 2) / warmup)
    assert cosine_lr(decay + 5, base_lr=base, min_lr=0.1 * base, warmup_steps=warmup, decay_steps=decay) == 0.1 * base


def test_cpu_rng_tracker_forks_and_restores():
    tracker = cpu_shim.CpuRngTracker()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    outside = torch.get_rng_state()
    with tracker.fork():
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), outside)
    with tracker.fork():
        b = torch.rand(3)
    assert not torch.equal(a, b)  # the forked stream advanced
    with pytest.raises(RuntimeError):
        tracker.add("model-parallel-rng", 7)


def test_debug_flavour_is_the_same_model_smaller():
    cfg = debug()
    assert cfg.model.num_layers == 4 and cfg.model.seq_length == 64
    assert cfg.optim.beta2 == 0.95 and cfg.optim.clip_grad == 1.0 and cfg.optim.init_checkpoint_samples > 0

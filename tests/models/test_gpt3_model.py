"""GPT-3 model and schedule pieces: the 175B shape, the closed LR rules, the resumed cosine schedule, the shim."""

import dataclasses
import math

import pytest
import torch

from models.gpt3.benchmark import cosine_lr
from models.gpt3.config import allowed_learning_rates, closed_learning_rate, debug, dgxh100_64x8
from models.gpt3.model import transformer_config
from runtime.mcore import cpu_shim


def test_175b_transformer_config_matches_the_spec():
    cfg = dgxh100_64x8()
    cfg.model.precision = "bf16"  # fp8 needs TE on a GPU
    c = transformer_config(cfg.model, cfg.train, tp=4, pp=8, use_te=False)
    assert (c.num_layers, c.hidden_size, c.num_attention_heads, c.ffn_hidden_size) == (96, 12288, 96, 49152)
    assert c.hidden_dropout == c.attention_dropout == 0.0 and c.layernorm_epsilon == 1e-5
    assert c.activation_func is torch.nn.functional.gelu and not c.gated_linear_unit
    assert not c.apply_query_key_layer_scaling and c.sequence_parallel
    assert c.virtual_pipeline_model_parallel_size == 4 and c.bf16
    # Full recompute of the first 2 of every chunk's 3 layers (models.gpt3.plan: the 80 GB fit).
    assert (c.recompute_granularity, c.recompute_method, c.recompute_num_layers) == ("full", "block", 2)
    assert c.output_layer_init_method is c.init_method  # std 0.006 everywhere, no 1/sqrt(2L) scaling
    w = torch.empty(4000, 1000)
    c.output_layer_init_method(w)
    assert w.std().item() == pytest.approx(0.006, rel=0.02)
    assert cfg.model.padded_vocab_size(8) == 51200 and cfg.model.padded_vocab_size(4) == 50688


def test_fp8_without_transformer_engine_uses_torch_fp8_gemms_in_the_layers():
    from models.gpt3.model import layer_spec
    from runtime.mcore.fp8_linear import Fp8ColumnParallelLinear, Fp8RowParallelLinear

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
    with pytest.raises(RuntimeError, match="'model-parallel-rng' .* already exists"):
        tracker.add("model-parallel-rng", 7)


def test_debug_flavour_is_the_same_model_smaller():
    cfg = debug()
    assert cfg.model.num_layers == 4 and cfg.model.seq_length == 64
    assert cfg.optim.beta2 == 0.95 and cfg.optim.clip_grad == 1.0 and cfg.optim.init_checkpoint_samples > 0


def _tiny_config(**train):
    from runtime.mcore.parallelize import init_megatron
    from runtime.parallel import ParallelLayout

    cfg = debug()
    cfg.train = dataclasses.replace(cfg.train, **train)
    init_megatron(ParallelLayout(1, 0), 1, seed=0)
    return cfg, transformer_config(cfg.model, cfg.train, tp=1, pp=1, use_te=False)


def test_sdpa_core_attention_is_megatrons_dot_product_attention():
    """model.attention "sdpa" swaps only the core attention of the local spec; on fp32 CPU tensors it gives
    DotProductAttention's output and input gradients (its s x s softmax, causal mask) to rounding."""
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from models.gpt3.model import SdpaDotProductAttention, layer_spec

    cfg, c = _tiny_config()
    assert cfg.model.attention == "local"  # the debug flavour (and its golden losses) keep megatron's
    core = lambda m: layer_spec(m, use_te=False).submodules.self_attention.submodules.core_attention  # noqa: E731
    assert core(cfg.model) is DotProductAttention
    assert core(dataclasses.replace(cfg.model, attention="sdpa")) is SdpaDotProductAttention
    assert dgxh100_64x8().model.attention == "sdpa"
    with pytest.raises(ValueError, match="model.attention='flash': expected one of"):
        layer_spec(dataclasses.replace(cfg.model, attention="flash"), use_te=False)
    s, b, n, d = 16, 2, 4, 16
    qkv = torch.randn(s, b, n, 3 * d, generator=torch.Generator().manual_seed(0), requires_grad=True)
    mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
    weights = torch.randn(s, b, n * d, generator=torch.Generator().manual_seed(1))
    results = []
    for cls in (DotProductAttention, SdpaDotProductAttention):
        qkv.grad = None
        q, k, v = torch.split(qkv, [d, d, d], dim=3)
        out = cls(c, 1, AttnMaskType.causal, "self")(q, k, v, mask)
        (out * weights).sum().backward()
        results.append((out.detach(), qkv.grad.clone()))
    (out_ref, grad_ref), (out_sdpa, grad_sdpa) = results
    assert out_sdpa.shape == out_ref.shape == (s, b, n * d)
    torch.testing.assert_close(out_sdpa, out_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_sdpa, grad_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="SDPA core attention: causal masks only"):
        SdpaDotProductAttention(c, 1, AttnMaskType.padding, "self")(q, k, v, mask)


def test_block_recompute_is_wired_and_leaves_gradients_unchanged():
    """train.recompute_method reaches megatron; recomputing the first layer of a 2-layer block gives the
    gradients of no recompute."""
    from megatron.core.transformer.transformer_block import TransformerBlock

    from models.gpt3.model import block_spec

    grads = {}
    for recompute in ("none", "full"):
        cfg, c = _tiny_config(recompute=recompute, recompute_method="block", recompute_num_layers=1)
        if recompute == "full":
            assert (c.recompute_granularity, c.recompute_method, c.recompute_num_layers) == ("full", "block", 1)
        torch.manual_seed(0)
        block = TransformerBlock(c, block_spec(cfg.model, c, False, None, 0))
        s, h = cfg.model.seq_length, cfg.model.hidden_size
        x = torch.randn(s, 2, h, generator=torch.Generator().manual_seed(2), requires_grad=True)
        mask = torch.triu(torch.ones(s, s, dtype=torch.bool), 1)[None, None]
        block(x, attention_mask=mask).square().sum().backward()
        grads[recompute] = [x.grad] + [p.grad for p in block.parameters()]
    for got, want in zip(grads["full"], grads["none"]):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    cfg = debug()
    with pytest.raises(ValueError, match="train.recompute_num_layers=5: expected 1..4"):  # one chunk: 4 layers
        transformer_config(cfg.model, dataclasses.replace(cfg.train, recompute="full", recompute_num_layers=5),
                           tp=1, pp=1, use_te=False)
    with pytest.raises(ValueError, match="train.recompute_method='all': expected uniform or block"):
        transformer_config(cfg.model, dataclasses.replace(cfg.train, recompute="full", recompute_method="all"),
                           tp=1, pp=1, use_te=False)

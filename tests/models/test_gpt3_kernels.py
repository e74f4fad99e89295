"""GPT-3's local (non-TE) layer spec on our kernels: the bias-dropout-adds are kernels/bias_dropout_add.py under
megatron's get_bias_dropout_add contract, and the language-model loss is kernels/cross_entropy_parallel.py.

The reference path is checked in process against megatron's own functions; the Triton path through the model
(MLPERF_KERNELS=triton under TRITON_INTERPRET=1, which must be set before the kernels are imported: a fresh
process) against the reference path, on a 2-layer model of the debug flavour's width."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.gpt3.model import bias_dropout_add_builder, layer_spec

REPO = Path(__file__).resolve().parents[2]
EPS32 = torch.finfo(torch.float32).eps


def test_local_spec_uses_the_kernel_bias_dropout_add():
    from models.gpt3.config import debug

    spec = layer_spec(debug().model, use_te=False)
    assert spec.submodules.self_attn_bda is bias_dropout_add_builder
    assert spec.submodules.mlp_bda is bias_dropout_add_builder


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_bias_dropout_add_is_megatrons_at_p0_bit_for_bit(monkeypatch, training, with_bias):
    """GPT-3 trains with hidden_dropout 0: out = residual + (x + bias) exactly as megatron's
    get_bias_dropout_add, including bias None, a residual in another dtype (cast to x's) and eval mode."""
    from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add

    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    g = torch.Generator().manual_seed(0)
    x, residual = torch.randn(5, 2, 24, generator=g), torch.randn(5, 2, 24, generator=g)
    bias = torch.randn(24, generator=g) if with_bias else None
    # clones for megatron: in eval mode, on tensors without grad, it adds in place into x
    for res in (residual, residual.double()):
        want = get_bias_dropout_add(training, False)((x.clone(), bias), res.clone(), 0.0)
        got = bias_dropout_add_builder(training, False)((x, bias), res, 0.0)
        assert got.dtype == want.dtype and torch.equal(got, want)
    # eval: no dropout whatever the probability, as megatron
    if not training:
        got = bias_dropout_add_builder(False, True)((x, bias), residual, 0.3)
        assert torch.equal(got, get_bias_dropout_add(False, False)((x.clone(), bias), residual.clone(), 0.3))


def test_bias_dropout_add_drops_and_rescales_in_training(monkeypatch):
    """p > 0: every element is either the residual alone or residual + (x + bias) / (1 - p), as megatron's
    dropout; the mask comes from the kernel's Philox stream, seeded from torch's CPU generator."""
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    g = torch.Generator().manual_seed(1)
    x, residual, bias = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g), torch.randn(32, generator=g)
    p = 0.25
    torch.manual_seed(5)
    out = bias_dropout_add_builder(True, False)((x, bias), residual, p)
    kept = residual + (x + bias) * torch.tensor(1 / (1 - p), dtype=torch.float32)
    is_dropped = out == residual
    assert bool(((out == kept) | is_dropped).all())
    assert 0.15 < is_dropped.float().mean().item() < 0.35
    torch.manual_seed(5)
    assert torch.equal(bias_dropout_add_builder(True, False)((x, bias), residual, p), out)  # reproducible


def _tiny_model():
    """A 2-layer, sequence-16 GPT-3 of the debug flavour's width, built as the benchmark builds it (TP=1)."""
    from models.gpt3.config import debug
    from models.gpt3.model import KernelGPTModel, transformer_config
    from models.gpt3.parallelize import build_model_chunks
    from runtime.mcore.parallelize import init_megatron
    from runtime.parallel import ParallelLayout

    cfg = debug()
    cfg.model = dataclasses.replace(cfg.model, num_layers=2, seq_length=16)
    init_megatron(ParallelLayout(1, 0), 1, seed=0)
    config = transformer_config(cfg.model, cfg.train, tp=1, pp=1, use_te=False)
    (model,) = build_model_chunks(cfg.model, config, pp_rank=0, pp=1, use_te=False)
    assert isinstance(model, KernelGPTModel)
    b, s, vocab = 2, cfg.model.seq_length, cfg.model.vocab_size
    g = torch.Generator().manual_seed(1)
    inputs = (torch.randint(0, vocab, (b, s), generator=g), torch.arange(s).expand(b, -1),
              torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)[None, None])
    return model, inputs, torch.randint(0, vocab, (b, s), generator=g)


class _Spy:
    """Counts the launches of a @triton.jit kernel (`kernel[grid](...)`)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


def _loss_and_grads(model, inputs, labels, kernels: str, dropout_seed: int | None = None):
    os.environ["MLPERF_KERNELS"] = kernels  # read at every kernel call
    for p in model.parameters():
        p.grad = None
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)  # the same dropout seeds drawn on both paths
    loss = model(*inputs, labels=labels)
    loss.mean().backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_close_fp32(name, got, want, ulps):
    """Within `ulps` fp32 units of the largest magnitude of `want` (the two paths sum in other orders)."""
    budget = ulps * EPS32 * want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= budget, f"{name}: max error {err:.3e} > {ulps} fp32 ulps of its scale ({budget:.3e})"


def triton_path_check() -> None:
    """Run in a fresh process with TRITON_INTERPRET=1 (see the test below)."""
    from megatron.core import tensor_parallel

    import kernels.bias_dropout_add as bda
    import kernels.cross_entropy_parallel as cep

    spies = {}
    for module, name in ((bda, "_bda_fwd_kernel"), (bda, "_bda_bwd_kernel"), (cep, "_shard_stats_kernel"),
                         (cep, "_shard_grad_kernel")):
        spies[name] = _Spy(getattr(module, name))
        setattr(module, name, spies[name])
    model, inputs, labels = _tiny_model()
    layers = len(model.decoder.layers)

    ref_loss, ref_grads = _loss_and_grads(model, inputs, labels, "reference")
    assert all(s.launches == 0 for s in spies.values()), {k: s.launches for k, s in spies.items()}
    tri_loss, tri_grads = _loss_and_grads(model, inputs, labels, "triton")
    # two bias-dropout-adds per layer, forward and backward; one vocab-parallel pass of each kind
    assert {k: s.launches for k, s in spies.items()} == {"_bda_fwd_kernel": 2 * layers, "_bda_bwd_kernel": 2 * layers,
                                                          "_shard_stats_kernel": 1, "_shard_grad_kernel": 1}
    assert tri_loss.dtype == ref_loss.dtype == torch.float32 and tri_loss.shape == labels.shape
    # fp32 throughout: the kernels' chunked log-sum-exp and per-program bias sums round differently from
    # torch's reductions (a few ulps measured); 16 ulps for the loss, 64 for gradients through two layers
    _assert_close_fp32("loss", tri_loss, ref_loss, 16)
    for name in ref_grads:
        _assert_close_fp32(name, tri_grads[name], ref_grads[name], 64)

    # With dropout (GPT-3 uses none; the contract allows it): the same seeds give the same masks on both paths.
    for layer in model.decoder.layers:
        layer.hidden_dropout = 0.2
    ref_loss, ref_grads = _loss_and_grads(model, inputs, labels, "reference", dropout_seed=3)
    tri_loss, tri_grads = _loss_and_grads(model, inputs, labels, "triton", dropout_seed=3)
    _assert_close_fp32("loss (dropout 0.2)", tri_loss, ref_loss, 16)
    for name in ref_grads:
        _assert_close_fp32(f"{name} (dropout 0.2)", tri_grads[name], ref_grads[name], 64)
    for layer in model.decoder.layers:
        layer.hidden_dropout = 0.0

    # The reference path's loss and logits gradient against megatron's vocab_parallel_cross_entropy.
    os.environ["MLPERF_KERNELS"] = "reference"
    with torch.no_grad():
        logits = model(*inputs).transpose(0, 1).contiguous()  # [s, b, V], as compute_language_model_loss gets it
    results = []
    for loss_fn in (lambda lg, lb: model.compute_language_model_loss(lb.transpose(0, 1), lg).transpose(0, 1),
                    tensor_parallel.vocab_parallel_cross_entropy):
        lg = logits.clone().requires_grad_(True)
        loss = loss_fn(lg, labels.transpose(0, 1).contiguous())
        loss.sum().backward()
        results.append((loss.detach(), lg.grad))
    (ours, ours_grad), (megatron, megatron_grad) = results
    _assert_close_fp32("loss vs megatron", ours, megatron, 16)
    _assert_close_fp32("logits grad vs megatron", ours_grad, megatron_grad, 16)
    print("ok")


def test_triton_kernels_through_the_model_give_the_reference_numbers():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "MLPERF_KERNELS": "triton"}
    code = "import sys; sys.path.insert(0, 'tests/models'); import test_gpt3_kernels as t; t.triton_path_check()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-3000:] + r.stderr[-5000:]

"""The dispatch switch, and torch.compile tracing a tiny block built from the custom ops."""

from __future__ import annotations

import pytest
import torch
from kernel_numerics import DEVICE, force_triton  # noqa: F401 (autouse fixture)
from torch import nn

from kernels import dispatch
from kernels.bias_dropout_add import bias_dropout_add
from kernels.bias_gelu import bias_gelu
from kernels.cross_entropy import cross_entropy
from kernels.layer_norm import FusedLayerNorm
from kernels.rms_norm import FusedRMSNorm


def test_mode_switch(monkeypatch):
    cpu = torch.zeros(2)
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    assert not dispatch.use_triton(cpu)
    monkeypatch.setenv("MLPERF_KERNELS", "triton")
    assert dispatch.use_triton(cpu)
    monkeypatch.setenv("MLPERF_KERNELS", "auto")
    assert dispatch.use_triton(cpu, None) is False
    monkeypatch.delenv("MLPERF_KERNELS")
    assert dispatch.mode() == "auto"
    monkeypatch.setenv("MLPERF_KERNELS", "cuda")
    with pytest.raises(ValueError, match="MLPERF_KERNELS='cuda': expected one of auto, triton, reference"):
        dispatch.use_triton(cpu)


class TinyBlock(nn.Module):
    """Pre-LN MLP block + LM head: every custom op once."""

    def __init__(self, hidden=32, ffn=64, vocab=96):
        super().__init__()
        self.norm = FusedLayerNorm(hidden)
        self.up = nn.Linear(hidden, ffn, bias=False)
        self.up_bias = nn.Parameter(torch.randn(ffn) * 0.1)
        self.down = nn.Linear(ffn, hidden, bias=False)
        self.down_bias = nn.Parameter(torch.randn(hidden) * 0.1)
        self.final = FusedRMSNorm(hidden, eps=1e-6)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, x, residual, target):
        h, residual = self.norm(x, residual)
        h = self.down(bias_gelu(self.up(h), self.up_bias, "tanh"))
        out = bias_dropout_add(h, self.down_bias, residual, 0.1, seed=7, offset=0)
        return cross_entropy(self.head(self.final(out)), target, label_smoothing=0.1)


@pytest.mark.slow
def test_torch_compile_traces_the_custom_ops():
    torch.manual_seed(0)
    model = TinyBlock().to(DEVICE)
    x, residual = torch.randn(6, 32, device=DEVICE), torch.randn(6, 32, device=DEVICE)
    target = torch.randint(0, 96, (6,), device=DEVICE)
    eager = model(x, residual, target)
    eager_grads = torch.autograd.grad(eager, list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is a failure
    loss = compiled(x, residual, target)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, eager)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want)

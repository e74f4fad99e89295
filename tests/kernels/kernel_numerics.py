"""Derived tolerances for kernel tests.

A kernel's result is compared with an fp64 evaluation of the reference. The budget is not a guessed
atol/rtol: it is twice the error that torch's own implementation makes in the same low precision
against that fp64 value, plus a floor at the largest magnitude of the expected value of
`floor_ulps` units in the last place of the output dtype (two correctly rounded results may differ by
one ulp) and FP32_ARITHMETIC_ULPS of fp32 (the kernels compute in fp32, while torch's CPU kernels
accumulate fp32 inputs in double, so its fp32 error can be exactly zero).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import pytest
import torch

# The Triton path runs natively on a GPU, and on CPU under Triton's interpreter. TRITON_INTERPRET must be
# set before any module defining a @triton.jit kernel is imported (triton reads it at decoration time):
# every test module here imports this module before `kernels`. (This is not a conftest.py because other
# test directories import names from tests/conftest.py as module `conftest`, which a second conftest.py
# would shadow.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if "kernels.bias_gelu" in sys.modules and "Interpreted" not in type(
            sys.modules["kernels.bias_gelu"]._bias_gelu_fwd_kernel).__name__:
        raise RuntimeError("kernels/ was imported before tests/kernels could set TRITON_INTERPRET=1: run "
                           "tests/kernels first or in its own pytest process")


@pytest.fixture(autouse=True)
def force_triton(monkeypatch):
    """Every kernel test forces the Triton path (tests of the reference path set it back themselves).
    Autouse in each test module that imports it."""
    monkeypatch.setenv("MLPERF_KERNELS", "triton")


FP32_ARITHMETIC_ULPS = 8
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_test(fn):
    """Mark a test `gpu` and skip it without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(fn))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def assert_derived_close(name: str, got: torch.Tensor, expected64: torch.Tensor, baseline: torch.Tensor,
                         floor_ulps: float = 1.0) -> None:
    assert got.shape == expected64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected64.shape)}"
    if got.numel() == 0:
        return
    err = max_abs(got, expected64)
    torch_err = max_abs(baseline, expected64)
    scale = expected64.detach().abs().max().item()
    eps_out, eps32 = torch.finfo(got.dtype).eps, torch.finfo(torch.float32).eps
    floor = (floor_ulps * eps_out + FP32_ARITHMETIC_ULPS * eps32) * scale + 1e-30
    budget = 2.0 * torch_err + floor
    assert err <= budget, (f"{name}: kernel error {err:.3e} > budget {budget:.3e} "
                           f"(torch {got.dtype} error {torch_err:.3e}, floor {floor:.3e}, scale {scale:.3e})")


def _run(fn: Callable, inputs: Sequence, cast=None):
    leaves = []
    for t in inputs:
        if isinstance(t, torch.Tensor):
            t = t.detach().clone() if cast is None or not t.is_floating_point() else t.detach().to(cast)
            if t.is_floating_point():
                t.requires_grad_(True)
        leaves.append(t)
    outs = fn(*leaves)
    return leaves, (tuple(outs) if isinstance(outs, (tuple, list)) else (outs,))


def check_forward_backward(kernel_fn: Callable, baseline_fn: Callable, reference_fn: Callable, inputs: Sequence,
                           floor_ulps: float = 1.0, seed: int = 12345) -> None:
    """Run the kernel and torch's implementation on `inputs`, and the reference on fp64 copies; compare
    every output, then every input gradient for one random upstream gradient (the same rounded values
    for all three)."""
    k_in, k_out = _run(kernel_fn, inputs)
    b_in, b_out = _run(baseline_fn, inputs)
    r_in, r_out = _run(reference_fn, inputs, cast=torch.float64)
    assert len(k_out) == len(r_out) == len(b_out)
    gen = torch.Generator().manual_seed(seed)
    upstream = [torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype) for o in k_out]
    for i, (k, b, r) in enumerate(zip(k_out, b_out, r_out)):
        assert_derived_close(f"output {i}", k, r, b, floor_ulps)

    def grads(leaves, outs):
        wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
        ups = [u.to(o.dtype) for u, o in zip(upstream, outs) if o.requires_grad]
        used = [o for o in outs if o.requires_grad]
        return torch.autograd.grad(used, wanted, ups, allow_unused=True, materialize_grads=True)

    for i, (k, b, r) in enumerate(zip(grads(k_in, k_out), grads(b_in, b_out), grads(r_in, r_out))):
        assert_derived_close(f"grad {i}", k, r, b, floor_ulps)

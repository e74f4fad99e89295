"""Derived tolerances for kernel tests, and the check that makes them safe to derive.

A kernel's result is compared with an fp64 evaluation of the reference. The budget is not a guessed
atol/rtol: it is twice the error that torch's own implementation makes in the same low precision
against that fp64 value, plus a floor at the largest magnitude of the expected value of
`floor_ulps` units in the last place of the output dtype (two correctly rounded results may differ by
one ulp) and FP32_ARITHMETIC_ULPS of fp32 (the kernels compute in fp32, while torch's CPU kernels
accumulate fp32 inputs in double, so its fp32 error can be exactly zero).

Torch's error is measured against the reference, so a wrong reference would loosen its own bound (with
RMSNorm's reference computing the variance instead of mean(x^2), torch's error against it is O(1) and so
is the budget: every kernel test passed). Two guards:
  1. `check_forward_backward` first checks the reference, in fp64, against an independent fp64 formula
     that each test writes from the textbook definition (`textbook_fn`: elementary torch ops, never the
     reference or the F.* function it wraps), outputs and gradients, to TEXTBOOK_RTOL.
  2. torch's error enters the budget capped at `torch_error_cap` (below): what a correct torch
     implementation can lose. A broken reference can then widen the budget by a few ulps at most, and an
     inf/nan baseline (torch overflowing in fp16) no longer makes every result pass.
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
# The cap on torch's error, at the largest magnitude of the expected value: TORCH_ERROR_CAP_ULPS ulps of
# the working dtype (the lowest precision among the inputs and the output: correctly rounded inputs and
# outputs lose 0.5 ulp each, and torch's low-precision kernels round a few intermediates, e.g. the
# residual sum) plus `cap_fp32_ulps` ulps of fp32 (torch's CPU kernels compute bf16/fp16 in fp32, and
# fp32 in fp32 or double). Measured over tests/kernels at the time of writing: at most 1.4 ulps of the
# working dtype for every kernel but cross-entropy's fp32 gradient (see its test), so 4 + 16 leaves 3x
# margin while a broken reference (an O(1) relative error) stays far outside 2 * cap.
TORCH_ERROR_CAP_ULPS = 4.0
TORCH_ERROR_CAP_FP32_ULPS = 16.0
# Reference (fp64) against textbook (fp64): two fp64 evaluations of the same formula differ by a few
# hundred units of 2^-53 at most for rows of <= 5000 elements (summation order); any formula error is
# orders of magnitude above 1e-10 (the smallest deliberate difference, a 1/(1-p) rounded to fp32, is 3e-8).
# TEXTBOOK_ATOL: where the true value is 0 (LayerNorm of one element and its gradient) both evaluations
# leave only rounding residue, of order 1e-15 for the O(1) inputs used here.
TEXTBOOK_RTOL = 1e-10
TEXTBOOK_ATOL = 1e-12
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def gpu_test(fn):
    """Mark a test `gpu` and skip it without CUDA."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")(fn))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def torch_error_cap(scale: float, working_dtype: torch.dtype, cap_fp32_ulps: float = TORCH_ERROR_CAP_FP32_ULPS
                    ) -> float:
    """The most of torch's own error a budget may use (see TORCH_ERROR_CAP_ULPS)."""
    eps_work, eps32 = torch.finfo(working_dtype).eps, torch.finfo(torch.float32).eps
    return (TORCH_ERROR_CAP_ULPS * eps_work + cap_fp32_ulps * eps32) * scale


def assert_derived_close(name: str, got: torch.Tensor, expected64: torch.Tensor, baseline: torch.Tensor,
                         floor_ulps: float = 1.0, working_dtype: torch.dtype | None = None,
                         cap_fp32_ulps: float = TORCH_ERROR_CAP_FP32_ULPS) -> None:
    """`working_dtype`: the lowest precision the computation ran in (default: got's dtype); it sizes the
    cap on torch's error. `cap_fp32_ulps`: a test whose torch baseline loses more in fp32 says why."""
    assert got.shape == expected64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected64.shape)}"
    if got.numel() == 0:
        return
    err = max_abs(got, expected64)
    torch_err = max_abs(baseline, expected64)
    scale = expected64.detach().abs().max().item()
    eps_out, eps32 = torch.finfo(got.dtype).eps, torch.finfo(torch.float32).eps
    floor = (floor_ulps * eps_out + FP32_ARITHMETIC_ULPS * eps32) * scale + 1e-30
    cap = torch_error_cap(scale, working_dtype or got.dtype, cap_fp32_ulps)
    used = torch_err if torch_err <= cap else cap  # a nan torch error is capped too
    budget = 2.0 * used + floor
    capped = f" capped at {cap:.3e}" if used != torch_err else ""
    assert err <= budget, (f"{name}: kernel error {err:.3e} > budget {budget:.3e} "
                           f"(torch {got.dtype} error {torch_err:.3e}{capped}, floor {floor:.3e}, scale {scale:.3e})")


def assert_textbook_close(name: str, reference64: torch.Tensor, textbook64: torch.Tensor,
                          rtol: float = TEXTBOOK_RTOL) -> None:
    """The reference's fp64 value against the independent formula's, relative to the largest magnitude."""
    assert reference64.shape == textbook64.shape, \
        f"{name}: reference shape {tuple(reference64.shape)} != textbook {tuple(textbook64.shape)}"
    if reference64.numel() == 0:
        return
    err = max_abs(reference64, textbook64)
    scale = textbook64.detach().abs().max().item()
    assert err <= rtol * scale + TEXTBOOK_ATOL, (
        f"{name}: the reference differs from the textbook formula by {err:.3e} (scale {scale:.3e}, allowed "
        f"{rtol:.0e} relative + {TEXTBOOK_ATOL:.0e}): the reference is wrong")


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


def _working_dtype(inputs: Sequence, out: torch.Tensor) -> torch.dtype:
    floats = [t.dtype for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()] + [out.dtype]
    return max(floats, key=lambda d: torch.finfo(d).eps)


def _upstream(outs, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=gen).to(device=o.device, dtype=o.dtype) for o in outs]


def _grads(leaves, outs, upstream):
    wanted = [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    ups = [u.to(o.dtype) for u, o in zip(upstream, outs) if o.requires_grad]
    used = [o for o in outs if o.requires_grad]
    return torch.autograd.grad(used, wanted, ups, allow_unused=True, materialize_grads=True)


def check_reference(reference_fn: Callable, textbook_fn: Callable, inputs: Sequence,
                    rtol: float = TEXTBOOK_RTOL, seed: int = 12345) -> None:
    """The reference against the textbook formula, both on fp64 copies of `inputs`: every output, then
    every input gradient for one random upstream gradient."""
    r_in, r_out = _run(reference_fn, inputs, cast=torch.float64)
    t_in, t_out = _run(textbook_fn, inputs, cast=torch.float64)
    assert len(r_out) == len(t_out), f"reference has {len(r_out)} outputs, textbook {len(t_out)}"
    upstream = _upstream(r_out, seed)
    for i, (r, t) in enumerate(zip(r_out, t_out)):
        assert_textbook_close(f"output {i}", r, t, rtol)
    for i, (r, t) in enumerate(zip(_grads(r_in, r_out, upstream), _grads(t_in, t_out, upstream))):
        assert_textbook_close(f"grad {i}", r, t, rtol)


def check_forward_backward(kernel_fn: Callable, baseline_fn: Callable, reference_fn: Callable, inputs: Sequence,
                           *, textbook_fn: Callable, floor_ulps: float = 1.0,
                           cap_fp32_ulps: float = TORCH_ERROR_CAP_FP32_ULPS, textbook_rtol: float = TEXTBOOK_RTOL,
                           seed: int = 12345) -> None:
    """First the reference against the textbook formula (`check_reference`); then the kernel and torch's
    implementation on `inputs`, and the reference on fp64 copies: every output, then every input gradient
    for one random upstream gradient (the same rounded values for all three)."""
    check_reference(reference_fn, textbook_fn, inputs, textbook_rtol, seed)
    k_in, k_out = _run(kernel_fn, inputs)
    b_in, b_out = _run(baseline_fn, inputs)
    r_in, r_out = _run(reference_fn, inputs, cast=torch.float64)
    assert len(k_out) == len(r_out) == len(b_out)
    upstream = _upstream(k_out, seed)
    for i, (k, b, r) in enumerate(zip(k_out, b_out, r_out)):
        assert_derived_close(f"output {i}", k, r, b, floor_ulps, _working_dtype(inputs, k), cap_fp32_ulps)
    for i, (k, b, r) in enumerate(zip(_grads(k_in, k_out, upstream), _grads(b_in, b_out, upstream),
                                      _grads(r_in, r_out, upstream))):
        assert_derived_close(f"grad {i}", k, r, b, floor_ulps, _working_dtype(inputs, k), cap_fp32_ulps)

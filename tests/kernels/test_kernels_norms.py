"""layer_norm / rms_norm (Triton) against fp64 and torch's own low-precision implementation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import DEVICE, check_forward_backward, force_triton  # noqa: F401 (autouse fixture)
from torch import nn

from kernels.layer_norm import FusedLayerNorm, layer_norm, layer_norm_ref
from kernels.rms_norm import FusedRMSNorm, rms_norm, rms_norm_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# one row; batched and not a power of two; a wide row (block 8192 > the row)
SHAPES = [(1, 37), (2, 3, 48), (3, 5000)]


def _inputs(shape, dtype, residual, affine, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = shape[-1]

    def rand(*s, scale=1.0, shift=0.0):
        return (torch.randn(*s, generator=gen) * scale + shift).to(DEVICE, dtype)

    x = rand(*shape, scale=2.0, shift=0.5)  # an offset mean exercises the mean subtraction
    r = rand(*shape) if residual else None
    w = rand(n, scale=0.3, shift=1.0) if affine in ("weight", "both") else None
    b = rand(n, scale=0.3) if affine == "both" else None
    return x, r, w, b


def _with_residual(norm):
    def apply(x, r, *params):
        h = x + r if r is not None else x
        y = norm(h, *params)
        return (y, h) if r is not None else y
    return apply


# every shape with and without the affine parameters, weight-without-bias on one shape
LN_CASES = [(shape, affine) for shape in SHAPES for affine in ("both", "none")] + [(SHAPES[1], "weight")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,affine", LN_CASES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_layer_norm(dtype, shape, affine, residual):
    x, r, w, b = _inputs(shape, dtype, residual, affine)
    eps = 1e-5
    baseline = _with_residual(lambda h, w, b: F.layer_norm(h, (h.shape[-1],), w, b, eps))
    check_forward_backward(lambda x, r, w, b: layer_norm(x, w, b, eps, residual=r),
                           baseline,
                           lambda x, r, w, b: layer_norm_ref(x, w, b, eps, residual=r),
                           [x, r, w, b])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_rms_norm(dtype, shape, residual):
    affine = "weight" if shape != SHAPES[0] else "none"
    x, r, w, _ = _inputs(shape, dtype, residual, affine)
    eps = 1e-6
    baseline = _with_residual(lambda h, w: F.rms_norm(h, (h.shape[-1],), w, eps))
    check_forward_backward(lambda x, r, w: rms_norm(x, w, eps, residual=r), baseline,
                           lambda x, r, w: rms_norm_ref(x, w, eps, residual=r), [x, r, w])


def test_unused_sum_and_sum_only_gradients():
    """Gradient arriving only at y, or only at the returned sum, reaches x and residual correctly."""
    x, r, w, b = _inputs((4, 40), torch.float32, True, "both")
    for pick in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (x, r)]
        ref_leaves = [t.clone().requires_grad_() for t in (x, r)]
        layer_norm(*leaves[:1], w, b, residual=leaves[1])[pick].sum().backward()
        layer_norm_ref(ref_leaves[0], w, b, residual=ref_leaves[1])[pick].sum().backward()
        for got, want in zip(leaves, ref_leaves):
            torch.testing.assert_close(got.grad, want.grad, atol=1e-5, rtol=1e-5)


def test_modules_interchange_state_dicts_with_torch():
    torch.manual_seed(0)
    ours, theirs = FusedLayerNorm(24).to(DEVICE), nn.LayerNorm(24).to(DEVICE)
    nn.init.normal_(theirs.weight)
    nn.init.normal_(theirs.bias)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(3, 24, device=DEVICE)
    torch.testing.assert_close(ours(x), theirs(x))
    theirs.load_state_dict(ours.state_dict())
    assert set(FusedLayerNorm(8, bias=False).state_dict()) == set(nn.LayerNorm(8, bias=False).state_dict())
    assert set(FusedLayerNorm(8, elementwise_affine=False).state_dict()) == set()

    rms_ours, rms_theirs = FusedRMSNorm(24, eps=1e-6).to(DEVICE), nn.RMSNorm(24, eps=1e-6).to(DEVICE)
    nn.init.normal_(rms_theirs.weight)
    rms_ours.load_state_dict(rms_theirs.state_dict())
    torch.testing.assert_close(rms_ours(x), rms_theirs(x))


def test_reference_path_off_cuda(monkeypatch):
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    x, r, w, b = _inputs((2, 16), torch.float32, True, "both")
    for got, want in zip(layer_norm(x, w, b, residual=r), layer_norm_ref(x, w, b, residual=r)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

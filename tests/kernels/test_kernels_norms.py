"""layer_norm / rms_norm (Triton) against fp64 and torch's own low-precision implementation; the references
first against the textbook formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    check_forward_backward,
    check_reference,
    force_triton,
)
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


# The textbook definitions, in elementary ops (never F.layer_norm / F.rms_norm, which the references call
# or mirror): over the last dimension of n elements,
#   LayerNorm(h) = (h - mean(h)) / sqrt(mean((h - mean(h))^2) + eps) * w + b     (biased variance)
#   RMSNorm(h)   = h / sqrt(mean(h^2) + eps) * w
def textbook_layer_norm(eps):
    def norm(h, w, b):
        n = h.shape[-1]
        mean = h.sum(-1, keepdim=True) / n
        variance = ((h - mean) * (h - mean)).sum(-1, keepdim=True) / n
        y = (h - mean) / torch.sqrt(variance + eps)
        y = y * w if w is not None else y
        return y + b if b is not None else y
    return _with_residual(norm)


def textbook_rms_norm(eps):
    def norm(h, w):
        y = h / torch.sqrt((h * h).sum(-1, keepdim=True) / h.shape[-1] + eps)
        return y * w if w is not None else y
    return _with_residual(norm)


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
                           [x, r, w, b], textbook_fn=textbook_layer_norm(eps))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_rms_norm(dtype, shape, residual):
    affine = "weight" if shape != SHAPES[0] else "none"
    x, r, w, _ = _inputs(shape, dtype, residual, affine)
    eps = 1e-6
    baseline = _with_residual(lambda h, w: F.rms_norm(h, (h.shape[-1],), w, eps))
    check_forward_backward(lambda x, r, w: rms_norm(x, w, eps, residual=r), baseline,
                           lambda x, r, w: rms_norm_ref(x, w, eps, residual=r), [x, r, w],
                           textbook_fn=textbook_rms_norm(eps))


def test_textbook_formulas_on_hand_computed_rows():
    """The textbook functions themselves, on rows worked out on paper (so that the formula the references
    are held to is not itself a copy of a mistake)."""
    row = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=torch.float64)  # mean 3, mean((x-3)^2) = 3.5, mean(x^2) = 12.5
    layer = textbook_layer_norm(0.0)(row, None, None, None)
    torch.testing.assert_close(layer, (row - 3.0) / 3.5 ** 0.5, rtol=1e-15, atol=0)
    rms = textbook_rms_norm(0.0)(row, None, None)
    torch.testing.assert_close(rms, row / 12.5 ** 0.5, rtol=1e-15, atol=0)
    # eps adds inside the square root; a weight and bias scale and shift per column; the residual is added first
    y, h = textbook_rms_norm(0.5)(row, -row, torch.ones(4, dtype=torch.float64))
    assert torch.equal(h, torch.zeros_like(row)) and torch.equal(y, torch.zeros_like(row))
    y = textbook_layer_norm(1.0)(row, None, torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64),
                                 torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(y, 2 * (row - 3.0) / 4.5 ** 0.5 + torch.tensor([0.0, 0.0, 0.0, 1.0],
                                                                             dtype=torch.float64), rtol=1e-15, atol=0)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 7), (2, 3, 129)], ids=str)
def test_references_on_small_awkward_shapes(shape):
    """A single element (LayerNorm of it is 0, its gradient 0), two, and odd widths; a large offset mean,
    where mean(x^2) and the variance differ most."""
    for residual in (False, True):
        x, r, w, b = _inputs(shape, torch.float64, residual, "both", seed=4)
        x = x + 20.0
        check_reference(lambda x, r, w, b: layer_norm_ref(x, w, b, 1e-5, residual=r), textbook_layer_norm(1e-5),
                        [x, r, w, b])
        check_reference(lambda x, r, w: rms_norm_ref(x, w, 1e-6, residual=r), textbook_rms_norm(1e-6), [x, r, w])


def test_unused_sum_and_sum_only_gradients():
    """Gradient arriving only at y, or only at the returned sum, reaches x and residual correctly (against
    the textbook formula in fp64)."""
    x, r, w, b = _inputs((4, 40), torch.float32, True, "both")
    for pick in (0, 1):
        leaves = [t.clone().requires_grad_() for t in (x, r)]
        want_leaves = [t.double().requires_grad_() for t in (x, r)]
        layer_norm(*leaves[:1], w, b, residual=leaves[1])[pick].sum().backward()
        textbook_layer_norm(1e-5)(*want_leaves, w.double(), b.double())[pick].sum().backward()
        for got, want in zip(leaves, want_leaves):
            torch.testing.assert_close(got.grad.double(), want.grad, atol=1e-5, rtol=1e-5)
        if pick == 1:  # d(sum h)/dx = d(sum h)/dr = 1 exactly
            assert torch.equal(leaves[0].grad, torch.ones_like(x)) and torch.equal(leaves[1].grad, torch.ones_like(r))


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_path_off_cuda(monkeypatch, dtype):
    """What runs off CUDA (MLPERF_KERNELS=reference): the public functions in low precision, held to the
    same derived bound as the kernel, against the textbook-checked fp64 reference."""
    monkeypatch.setenv("MLPERF_KERNELS", "reference")
    x, r, w, b = _inputs((3, 5, 48), dtype, True, "both")
    check_forward_backward(lambda x, r, w, b: layer_norm(x, w, b, 1e-5, residual=r),
                           _with_residual(lambda h, w, b: F.layer_norm(h, (h.shape[-1],), w, b, 1e-5)),
                           lambda x, r, w, b: layer_norm_ref(x, w, b, 1e-5, residual=r), [x, r, w, b],
                           textbook_fn=textbook_layer_norm(1e-5))
    check_forward_backward(lambda x, r, w: rms_norm(x, w, 1e-6, residual=r),
                           _with_residual(lambda h, w: F.rms_norm(h, (h.shape[-1],), w, 1e-6)),
                           lambda x, r, w: rms_norm_ref(x, w, 1e-6, residual=r), [x, r, w],
                           textbook_fn=textbook_rms_norm(1e-6))

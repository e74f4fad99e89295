"""bias_dropout_add (Triton) against the torch reference drawing the same Philox mask; the reference first
against the textbook formula with that mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    check_forward_backward,
    check_reference,
    force_triton,
)

from kernels.bias_dropout_add import bias_dropout_add, bias_dropout_add_ref, dropout_keep_mask, philox_uniform

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 40), (3, 5, 24), (2, 1100)]
SEED, OFFSET = 1234, 77


def _inputs(shape, dtype, bias=True):
    gen = torch.Generator().manual_seed(2)
    x, r = (torch.randn(*shape, generator=gen).to(DEVICE, dtype) for _ in range(2))
    b = torch.randn(shape[-1], generator=gen).to(DEVICE, dtype) if bias else None
    return x, b, r


def textbook_bias_dropout_add(p, seed, offset):
    """residual + mask * (x + bias) / (1 - p): inverted dropout with the keep mask (element i kept when its
    Philox draw is >= p; the mask itself is checked against Triton's tl.rand and for its rate below), the
    1 / (1 - p) being the fp32 value eager torch's dropout multiplies by (the kernel's contract,
    kernels/bias_dropout_add.py)."""
    scale = float(np.float32(1.0 / (1.0 - p)))

    def bda(x, bias, residual):
        t = x + bias if bias is not None else x
        if p == 0.0:
            return residual + t
        keep = dropout_keep_mask(x.shape, p, seed, offset, x.device).to(t.dtype)
        return residual + keep * t * scale
    return bda


def test_philox_matches_triton_rand():
    import triton
    import triton.language as tl

    @triton.jit
    def draw(out, seed, offset, n, BLOCK: tl.constexpr):
        idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out + idx, tl.rand(seed, offset + idx), mask=idx < n)

    for seed, offset in ((0, 0), (SEED, OFFSET), (2**40 + 5, 2**33 - 100)):  # high words of seed/counter
        got = torch.empty(300, device=DEVICE)
        draw[(3,)](got, seed, offset, 300, BLOCK=128)
        want = philox_uniform(seed, torch.arange(300, dtype=torch.int64, device=DEVICE) + offset)
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p,bias", [(0.1, True), (0.5, False), (0.0, True)])
def test_bias_dropout_add(dtype, shape, p, bias):
    x, b, r = _inputs(shape, dtype, bias)
    check_forward_backward(lambda x, b, r: bias_dropout_add(x, b, r, p, seed=SEED, offset=OFFSET),
                           lambda x, b, r: bias_dropout_add_ref(x, b, r, p, SEED, OFFSET),
                           lambda x, b, r: bias_dropout_add_ref(x, b, r, p, SEED, OFFSET), [x, b, r],
                           textbook_fn=textbook_bias_dropout_add(p, SEED, OFFSET))


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (7, 5)], ids=str)
@pytest.mark.parametrize("p", [0.0, 0.1, 0.9])
def test_reference_on_small_awkward_shapes(shape, p):
    x, b, r = (t.double() for t in _inputs(shape, torch.float32))
    check_reference(lambda x, b, r: bias_dropout_add_ref(x, b, r, p, SEED, 3), textbook_bias_dropout_add(p, SEED, 3),
                    [x, b, r])
    check_reference(lambda x, r: bias_dropout_add_ref(x, None, r, p, SEED, 3),
                    lambda x, r: textbook_bias_dropout_add(p, SEED, 3)(x, None, r), [x, r])


def test_reference_by_hand():
    """Values worked out on paper: the dropped elements are residual alone, the kept ones residual +
    (x + bias) / (1 - p)."""
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    bias, residual = torch.tensor([0.5, 0.5, 0.5, 0.5]), torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    keep = dropout_keep_mask((1, 4), 0.5, SEED, 0)
    assert keep.any() and not keep.all()  # both branches
    want = torch.tensor([[10.0 + 3.0, 20.0 + 5.0, 30.0 + 7.0, 40.0 + 9.0]])  # (x + 0.5) * 2
    want = torch.where(keep, want, residual)
    assert torch.equal(bias_dropout_add_ref(x, bias, residual, 0.5, SEED, 0), want)
    assert torch.equal(bias_dropout_add_ref(x, bias, residual, 0.0, SEED, 0), residual + x + 0.5)


# Triton's CPU interpreter truncates fp32 -> bf16 casts (GPUs round to nearest even), so bf16 can only
# match eager torch bit for bit on a GPU.
BITWISE_DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE.type == "cuda" else [])


@pytest.mark.parametrize("dtype", BITWISE_DTYPES, ids=str)
def test_same_bits_as_reference_and_p0_exact(dtype):
    x, b, r = _inputs((6, 40), dtype)
    ours = bias_dropout_add(x, b, r, 0.25, seed=SEED, offset=OFFSET)
    assert torch.equal(ours, bias_dropout_add_ref(x, b, r, 0.25, SEED, OFFSET))
    assert torch.equal(bias_dropout_add(x, b, r, 0.0, seed=SEED), r + (x + b))
    assert torch.equal(bias_dropout_add(x, b, r, 0.25, training=False), r + (x + b))


def test_mask_is_reproducible_and_has_the_right_rate():
    p, shape = 0.3, (64, 128)
    keep = dropout_keep_mask(shape, p, SEED, 0)
    assert torch.equal(keep, dropout_keep_mask(shape, p, SEED, 0))
    assert not torch.equal(keep, dropout_keep_mask(shape, p, SEED, keep.numel()))
    assert not torch.equal(keep, dropout_keep_mask(shape, p, SEED + 1, 0))
    rate, n = keep.float().mean().item(), keep.numel()
    assert abs(rate - (1 - p)) < 4 * ((p * (1 - p) / n) ** 0.5)  # within 4 standard deviations
    x, r = torch.ones(shape, device=DEVICE), torch.zeros(shape, device=DEVICE)
    out = bias_dropout_add(x, None, r, p, seed=SEED, offset=0)
    assert torch.equal(out != 0, keep.to(DEVICE))
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 1 / (1 - p)))


def test_seed_drawn_from_torch_generator():
    x, b, r = _inputs((2, 16), torch.float32)
    torch.manual_seed(5)
    first = bias_dropout_add(x, b, r, 0.5)
    torch.manual_seed(5)
    assert torch.equal(first, bias_dropout_add(x, b, r, 0.5))

"""bias_gelu (Triton) against fp64 and torch's own low-precision add + GELU; the reference first against the
textbook GELU formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    check_forward_backward,
    check_reference,
    force_triton,
)

from kernels.bias_gelu import bias_gelu, bias_gelu_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 50), (3, 7, 33), (2, 1500)]  # one row; non-power-of-two rows and columns; a wide row


def textbook_gelu(approximate):
    """GELU(u) = u * Phi(u) = u/2 * (1 + erf(u / sqrt 2)) (Hendrycks & Gimpel), and its tanh approximation
    u/2 * (1 + tanh(sqrt(2/pi) * (u + 0.044715 u^3))), of u = x + bias; elementary ops, not F.gelu."""
    def gelu(x, bias=None):
        u = x + bias if bias is not None else x
        if approximate == "tanh":
            return 0.5 * u * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (u + 0.044715 * u * u * u)))
        return 0.5 * u * (1.0 + torch.erf(u / math.sqrt(2.0)))
    return gelu


def test_textbook_gelu_at_hand_computed_points():
    u = torch.tensor([0.0, 1.0, -1.0, 3.0], dtype=torch.float64)
    phi = torch.tensor([0.5, 0.8413447460685429, 0.15865525393145707, 0.9986501019683699], dtype=torch.float64)
    torch.testing.assert_close(textbook_gelu("none")(u), u * phi, rtol=1e-15, atol=0)  # Phi: scipy.stats.norm.cdf
    # tanh form at 1: sqrt(2/pi) * 1.044715 = 0.833554..., tanh of it = 0.682494...
    torch.testing.assert_close(textbook_gelu("tanh")(u[1:2]), torch.tensor([0.8411919906082768], dtype=torch.float64),
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu(dtype, shape, approximate):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=gen) * 3).to(DEVICE, dtype)  # reaches both GELU tails
    bias = torch.randn(shape[-1], generator=gen).to(DEVICE, dtype)
    check_forward_backward(lambda x, b: bias_gelu(x, b, approximate),
                           lambda x, b: F.gelu(x + b, approximate=approximate),
                           lambda x, b: bias_gelu_ref(x, b, approximate), [x, bias],
                           textbook_fn=textbook_gelu(approximate))


@pytest.mark.parametrize("shape", [(1, 1), (1, 3), (5, 7)], ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_reference_on_small_awkward_shapes(shape, approximate):
    gen = torch.Generator().manual_seed(2)
    x, bias = torch.randn(*shape, generator=gen, dtype=torch.float64) * 4, torch.randn(shape[-1], generator=gen)
    check_reference(lambda x, b: bias_gelu_ref(x, b, approximate), textbook_gelu(approximate), [x, bias])
    check_reference(lambda x: bias_gelu_ref(x, None, approximate), textbook_gelu(approximate), [x])


def test_without_bias_and_large_inputs():
    x = torch.tensor([[-60.0, -9.0, -1e-4, 0.0, 1e-4, 9.0, 60.0]], device=DEVICE)
    for approximate in ("none", "tanh"):
        check_forward_backward(lambda x, approximate=approximate: bias_gelu(x, None, approximate),
                               lambda x, approximate=approximate: F.gelu(x, approximate=approximate),
                               lambda x, approximate=approximate: bias_gelu_ref(x, None, approximate), [x],
                               textbook_fn=textbook_gelu(approximate))


def test_rejects_unknown_approximation():
    with pytest.raises(ValueError, match=r"approximate='sigmoid': expected one of \('none', 'tanh'\)"):
        bias_gelu(torch.zeros(2, 3), torch.zeros(3), "sigmoid")

"""bias_gelu (Triton) against fp64 and torch's own low-precision add + GELU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import DEVICE, check_forward_backward, force_triton  # noqa: F401 (autouse fixture)

from kernels.bias_gelu import bias_gelu, bias_gelu_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 50), (3, 7, 33), (2, 1500)]  # one row; non-power-of-two rows and columns; a wide row


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu(dtype, shape, approximate):
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(*shape, generator=gen) * 3).to(DEVICE, dtype)  # reaches both GELU tails
    bias = torch.randn(shape[-1], generator=gen).to(DEVICE, dtype)
    check_forward_backward(lambda x, b: bias_gelu(x, b, approximate),
                           lambda x, b: F.gelu(x + b, approximate=approximate),
                           lambda x, b: bias_gelu_ref(x, b, approximate), [x, bias])


def test_without_bias_and_large_inputs():
    x = torch.tensor([[-60.0, -9.0, -1e-4, 0.0, 1e-4, 9.0, 60.0]], device=DEVICE)
    for approximate in ("none", "tanh"):
        check_forward_backward(lambda x, approximate=approximate: bias_gelu(x, None, approximate),
                               lambda x, approximate=approximate: F.gelu(x, approximate=approximate),
                               lambda x, approximate=approximate: bias_gelu_ref(x, None, approximate), [x])


def test_rejects_unknown_approximation():
    with pytest.raises(ValueError):
        bias_gelu(torch.zeros(2, 3), torch.zeros(3), "sigmoid")

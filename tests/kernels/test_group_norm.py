"""group_norm (Triton, fused SiLU) against fp64 and torch's own GroupNorm; the reference first against the
textbook formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    check_forward_backward,
    force_triton,
)

from kernels.group_norm import group_norm, group_norm_ref

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# one sample and one spatial element (3 per group: with 2, dx is exactly 0 and only rounding is left);
# non-power-of-two channels per group (SD: 20 of 320) and spatial sizes; a group wider than one block
SHAPES = [((1, 6, 1, 1), 2), ((2, 6, 5, 3), 3), ((2, 32, 9, 7), 16), ((1, 80, 5, 7), 16), ((1, 4, 300), 2)]


def textbook(groups: int, silu: bool, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * w + b over each group of channels (biased variance), then x sigmoid(x)
    if asked; elementary ops, not F.group_norm."""
    def fn(x, w, b):
        shape = x.shape
        g = x.reshape(shape[0], groups, -1)
        mean = g.mean(-1, keepdim=True)
        var = ((g - mean) ** 2).mean(-1, keepdim=True)
        y = ((g - mean) / torch.sqrt(var + eps)).reshape(shape)
        view = (1, -1) + (1,) * (x.dim() - 2)
        y = y * w.view(view) + b.view(view)
        return y * torch.sigmoid(y) if silu else y
    return fn


def _inputs(shape, dtype, seed=1, channels_last=False):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(*shape, generator=gen) * 2 + 0.5).to(DEVICE, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (1 + 0.5 * torch.randn(shape[1], generator=gen)).to(DEVICE, dtype)
    b = (0.3 * torch.randn(shape[1], generator=gen)).to(DEVICE, dtype)
    return [x, w, b]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape, groups", SHAPES, ids=str)
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm(dtype, shape, groups, silu):
    def baseline(x, w, b):
        y = F.group_norm(x, groups, w, b, 1e-5)
        return F.silu(y) if silu else y

    check_forward_backward(lambda x, w, b: group_norm(x, groups, w, b, 1e-5, silu=silu), baseline,
                           lambda x, w, b: group_norm_ref(x, groups, w, b, 1e-5, silu), _inputs(shape, dtype),
                           textbook_fn=textbook(groups, silu))


@pytest.mark.parametrize("silu", [False, True])
def test_channels_last_input(silu):
    inputs = _inputs((2, 8, 5, 6), torch.float32, seed=3, channels_last=True)
    check_forward_backward(lambda x, w, b: group_norm(x, 4, w, b, 1e-5, silu=silu),
                           lambda x, w, b: group_norm_ref(x, 4, w, b, 1e-5, silu),
                           lambda x, w, b: group_norm_ref(x, 4, w, b, 1e-5, silu), inputs,
                           textbook_fn=textbook(4, silu))


def test_without_affine_and_bad_arguments(monkeypatch):
    x = torch.randn(2, 4, 3, 3, device=DEVICE)
    torch.testing.assert_close(group_norm(x, 2, silu=True), F.silu(F.group_norm(x, 2, eps=1e-5)))
    with pytest.raises(ValueError, match=r"input shape \(2, 4, 3, 3\) has no channel dimension divisible by 3"):
        group_norm(x, 3)
    with pytest.raises(ValueError, match="give both weight and bias"):
        group_norm(x, 2, torch.ones(4, device=DEVICE))


def test_a_layout_whose_spatial_axes_do_not_flatten_is_copied_first():
    # x[..., ::2] of a (2, 8, 6, 10) tensor: W stride 2, H stride 10, no single spatial stride
    check_forward_backward(lambda x, w, b: group_norm(x[..., ::2], 4, w, b, 1e-5, silu=True),
                           lambda x, w, b: F.silu(F.group_norm(x[..., ::2], 4, w, b, 1e-5)),
                           lambda x, w, b: group_norm_ref(x[..., ::2], 4, w, b, 1e-5, True),
                           _inputs((2, 8, 6, 10), torch.float32, seed=4),
                           textbook_fn=lambda x, w, b: textbook(4, True)(x[..., ::2], w, b))

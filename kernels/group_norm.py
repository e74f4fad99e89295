"""GroupNorm over (B, C, *) with fp32 statistics and an optional fused SiLU (the SD UNet's norm + activation).

    y = group_norm(x, groups, weight, bias, eps)             # torch.nn.functional.group_norm
    y = group_norm(x, groups, weight, bias, eps, silu=True)  # silu(group_norm(...)), one pass over x

NVIDIA's SD submission fuses these with apex's group-norm extension; here the fused path is a Triton kernel
(kernels/group_norm_triton.py: fp32 two-pass statistics, NCHW or channels_last without a copy, the backward
recomputing the pre-activation) on CUDA, and the torch reference everywhere else (MLPERF_KERNELS,
kernels/dispatch.py). Weight and bias come together or not at all, as nn.GroupNorm's `affine`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.dispatch import use_triton


def group_norm_ref(x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, silu: bool = False) -> torch.Tensor:
    """The torch reference: statistics in fp32 (as torch's own CUDA kernel under autocast), output in x's dtype."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    w = weight.to(xf.dtype) if weight is not None else None
    b = bias.to(xf.dtype) if bias is not None else None
    y = F.group_norm(xf, groups, w, b, eps)
    if silu:
        y = F.silu(y)
    return y.to(x.dtype)


def group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, silu: bool = False) -> torch.Tensor:
    if x.dim() < 2 or x.shape[1] % groups:
        raise ValueError(f"group_norm: input shape {tuple(x.shape)} has no channel dimension divisible by "
                         f"{groups} groups")
    if (weight is None) != (bias is None):
        raise ValueError("group_norm: give both weight and bias, or neither")
    if not use_triton(x, weight, bias):
        return group_norm_ref(x, groups, weight, bias, eps, silu)
    from kernels.group_norm_triton import GroupNormFunction  # imports triton: only when the kernel runs

    return GroupNormFunction.apply(x, groups, weight, bias, eps, silu)

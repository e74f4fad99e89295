"""GroupNorm over (B, C, *) with fp32 statistics and an optional fused SiLU (the SD UNet's norm + activation).

    y = group_norm(x, groups, weight, bias, eps)             # torch.nn.functional.group_norm
    y = group_norm(x, groups, weight, bias, eps, silu=True)  # silu(group_norm(...)), one pass over x

NVIDIA's SD submission fuses these with apex's group-norm extension; here the fused path is a Triton kernel
(kernels/group_norm_triton.py: fp32 two-pass statistics, NCHW or channels_last without a copy, the backward
recomputing the pre-activation) on CUDA, and the torch reference everywhere else (MLPERF_KERNELS,
kernels/dispatch.py). Weight and bias come together or not at all, as nn.GroupNorm's `affine`.

MLPERF_KERNELS=apex gives apex's own NHWC kernel (apex.contrib.group_norm.GroupNorm, act="silu" for the fused
SiLU; an error when apex is not usable) for every call its kernel covers: affine, 4-D, groups and channels in
its supported sets, a supported (input, weight) dtype pair; the input is made channels_last first (a no-op
for SD on CUDA, which trains channels_last). What apex would hand to torch instead stays on our path. Our
parameters are used as they are (torch.func.functional_call over one cached apex module per shape), so a
model switches backends without touching its state dict.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kernels import backends
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
    if backends.apex_wanted():
        apex_group_norm = backends.apex_op("group_norm")  # a clear error when apex is not usable
        if _apex_has_kernel_for(apex_group_norm, x, groups, weight):
            return _apex_forward(apex_group_norm, x, groups, weight, bias, eps, silu)
    if not use_triton(x, weight, bias):
        return group_norm_ref(x, groups, weight, bias, eps, silu)
    from kernels.group_norm_triton import GroupNormFunction  # imports triton: only when the kernel runs

    return GroupNormFunction.apply(x, groups, weight, bias, eps, silu)


def _apex_has_kernel_for(apex_group_norm, x: torch.Tensor, groups: int, weight: torch.Tensor | None) -> bool:
    """apex's own legality test (GroupNorm._check_legality, which needs an instance), from its class attributes."""
    return (weight is not None and x.dim() == 4 and groups in apex_group_norm.SUPPORTED_GROUPS
            and x.shape[1] in apex_group_norm.SUPPORTED_CHANNELS
            and (x.dtype, weight.dtype) in apex_group_norm.SUPPORTED_DTYPES)


@functools.lru_cache(maxsize=None)
def _apex_module(apex_group_norm, groups: int, channels: int, eps: float, act: str | None, device: torch.device,
                 dtype: torch.dtype):
    # Its own weight and bias are never used: functional_call substitutes the caller's.
    return apex_group_norm(groups, channels, eps=eps, affine=True, device=device, dtype=dtype, act=act)


def _apex_forward(apex_group_norm, x, groups, weight, bias, eps, silu):
    module = _apex_module(apex_group_norm, groups, x.shape[1], float(eps), "silu" if silu else None, x.device,
                          weight.dtype)
    x_nhwc = x.contiguous(memory_format=torch.channels_last)  # apex's kernel reads NHWC only
    return torch.func.functional_call(module, {"weight": weight, "bias": bias}, (x_nhwc,))

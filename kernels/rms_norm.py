"""RMSNorm over the last dimension with fp32 statistics and an optional fused residual add.

    y = rms_norm(x, weight, eps)                  # y = x / sqrt(mean(x^2) + eps) * weight
    y, h = rms_norm(x, weight, eps, residual=r)   # h = x + r (x's dtype), y = RMSNorm(h)

Same contract as layer_norm (see there): fp32 statistics, y in x's dtype, gradients for x, residual and
weight (weight optional). `FusedRMSNorm` is a drop-in for `nn.RMSNorm` over one trailing dimension with
its parameter name (`weight`) and its eps default (None: the machine epsilon of the input dtype).
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.dispatch import use_triton


def _eps(eps: float | None, x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).eps if eps is None else eps


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float | None = None,
                 residual: torch.Tensor | None = None):
    """The torch reference: statistics and scaling in fp32, output in x's dtype."""
    h = x + residual if residual is not None else x
    hf = h.float() if h.dtype in (torch.float16, torch.bfloat16) else h
    y = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + _eps(eps, x))
    if weight is not None:
        y = y * weight.to(hf.dtype)
    y = y.to(x.dtype)
    return (y, h) if residual is not None else y


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float | None = None,
             residual: torch.Tensor | None = None):
    """RMSNorm of x (or of x + residual, returned too). Triton on CUDA, the reference elsewhere."""
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if not use_triton(x, residual, weight):
        return rms_norm_ref(x, weight, eps, residual)
    from kernels._norm_kernels import NormFunction  # imports triton: only when the kernel runs

    y, h, _, _ = NormFunction.apply(x, residual, weight, None, _eps(eps, x), True)
    return (y, h) if residual is not None else y


class FusedRMSNorm(nn.Module):
    """`nn.RMSNorm(n)` with the fused kernel; `forward(x, residual=None)` as `rms_norm` above."""

    def __init__(self, normalized_shape: int | tuple[int] | list[int], eps: float | None = None,
                 elementwise_affine: bool = True, device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"FusedRMSNorm normalises one trailing dimension, got {shape}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        if elementwise_affine:
            self.weight = nn.Parameter(torch.ones(shape, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return rms_norm(x, self.weight, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

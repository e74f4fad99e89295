"""LayerNorm over the last dimension with fp32 statistics and an optional fused residual add.

    y = layer_norm(x, weight, bias, eps)                    # y = LN(x)
    y, h = layer_norm(x, weight, bias, eps, residual=r)     # h = x + r (x's dtype), y = LN(h)

The second form is the pre-LN transformer block's `h = x + residual; y = LN(h)` in one read of each
input: `h` is the new residual stream, `y` feeds attention or the MLP. Gradients reach x, residual,
weight and bias. Statistics are fp32 whatever the dtype of x; y has x's dtype, the gradients of weight
and bias have the parameters' dtype (fp32 parameters under autocast are the common case).

`FusedLayerNorm` is a drop-in for `nn.LayerNorm` over one trailing dimension, with the same parameter
names (`weight`, `bias`), so state dicts load either way. The kernels are in _norm_kernels.py, shared
with RMSNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kernels.dispatch import use_triton


def _at_least_fp32(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   eps: float = 1e-5, residual: torch.Tensor | None = None):
    """The torch reference: the same contract, statistics and affine in fp32, output in x's dtype."""
    h = x + residual if residual is not None else x
    y = F.layer_norm(_at_least_fp32(h), (h.shape[-1],), _at_least_fp32(weight), _at_least_fp32(bias),
                     eps).to(x.dtype)
    return (y, h) if residual is not None else y


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5, residual: torch.Tensor | None = None):
    """LayerNorm of x (or of x + residual, returned too). Triton on CUDA, the reference elsewhere."""
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if not use_triton(x, residual, weight, bias):
        return layer_norm_ref(x, weight, bias, eps, residual)
    from kernels._norm_kernels import NormFunction  # imports triton: only when the kernel runs

    y, h, _, _ = NormFunction.apply(x, residual, weight, bias, eps, False)
    return (y, h) if residual is not None else y


class FusedLayerNorm(nn.Module):
    """`nn.LayerNorm(n)` with the fused kernel; `forward(x, residual=None)` as `layer_norm` above."""

    def __init__(self, normalized_shape: int | tuple[int] | list[int], eps: float = 1e-5,
                 elementwise_affine: bool = True, bias: bool = True, device=None, dtype=None):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        if len(shape) != 1:
            raise ValueError(f"FusedLayerNorm normalises one trailing dimension, got {shape}")
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        factory = {"device": device, "dtype": dtype}
        weight = nn.Parameter(torch.empty(shape, **factory)) if elementwise_affine else None
        self.register_parameter("weight", weight)
        self.register_parameter("bias", nn.Parameter(torch.empty(shape, **factory))
                                if elementwise_affine and bias else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        return layer_norm(x, self.weight, self.bias, self.eps, residual)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"

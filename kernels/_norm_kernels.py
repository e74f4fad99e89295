"""The Triton kernels, custom ops and autograd.Function shared by `layer_norm` and `rms_norm`.

One kernel serves both norms: RMSNorm is LayerNorm without the mean subtraction (and usually without a
bias), so the two differ by one constexpr (IS_RMS). The public functions, references and modules live
in layer_norm.py and rms_norm.py.

Shapes: x_MN is the input flattened to M rows of N features (the normalised last dimension).
Forward, one program per row, the whole row in registers (N <= 65536):
    s = x + residual (rounded to x's dtype, then normalised: the backward recomputes from that rounded
    sum, and it is the value the next pre-LN block adds to), statistics in fp32, y = xhat * w + b.
Backward, a few persistent programs each walking a run of rows, accumulating dw/db partials in fp32:
    dx = rstd * (w*dy - xhat * mean(xhat * w*dy) - mean(w*dy))     (LayerNorm)
    dx = rstd * (w*dy - xhat * mean(xhat * w*dy))                   (RMSNorm)
plus the gradient arriving at the returned sum, which flows straight to x and residual.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import num_programs_hint, warps_for

MAX_FUSED_N = 65536


@triton.jit
def _norm_fwd_kernel(X, R, W, B, Y, S, MEAN, RSTD, N, eps,
                     HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     IS_RMS: tl.constexpr, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    offs = row * N + cols
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = (x + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)).to(S.dtype.element_ty)
        tl.store(S + offs, s, mask=mask)
        x = s.to(tl.float32)
    if IS_RMS:
        xc = x
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)
        tl.store(MEAN + row, mean)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    y = xc * rstd
    if HAS_WEIGHT:
        y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _norm_bwd_kernel(DY, DS, X, W, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL, M, N, rows_per_program,
                     HAS_DSUM: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
                     IS_RMS: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    if HAS_WEIGHT:
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_start = pid * rows_per_program
    n_rows = tl.minimum(row_start + rows_per_program, M) - row_start
    first_row = row_start.to(tl.int64)  # 64-bit offsets: M * N may pass 2**31
    for i in range(0, n_rows):
        row = first_row + i
        offs = row * N + cols
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row)
        if IS_RMS:
            xhat = x * rstd
        else:
            xhat = tl.where(mask, (x - tl.load(MEAN + row)) * rstd, 0.0)
        wdy = dy
        if HAS_WEIGHT:
            wdy = dy * w
        c1 = tl.sum(xhat * wdy, axis=0) / N
        if IS_RMS:
            dx = (wdy - xhat * c1) * rstd
        else:
            dx = (wdy - xhat * c1 - tl.sum(wdy, axis=0) / N) * rstd
        if HAS_DSUM:
            dx += tl.load(DS + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        if HAS_WEIGHT:
            dw_acc += dy * xhat
        if HAS_BIAS:
            db_acc += dy
    if HAS_WEIGHT:
        tl.store(DW_PARTIAL + pid * N + cols, dw_acc, mask=mask)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid * N + cols, db_acc, mask=mask)


def _block(n: int) -> int:
    if n > MAX_FUSED_N:
        raise ValueError(f"fused norm supports rows of at most {MAX_FUSED_N} features, got {n}")
    return triton.next_power_of_2(n)


def _empty(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(0)


# Optional inputs travel as Tensor? and absent outputs as empty tensors: custom-op schemas have no
# optional outputs, and an output may not alias an input.
@torch.library.custom_op("mlperf_kernels::norm_fwd", mutates_args=())
def norm_fwd(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor | None,
             bias: torch.Tensor | None, eps: float, is_rms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    m = x2.shape[0]
    y = torch.empty_like(x2)
    s = torch.empty_like(x2) if residual is not None else _empty(x)
    mean = x.new_empty(0 if is_rms else m, dtype=torch.float32)
    rstd = x.new_empty(m, dtype=torch.float32)
    r2 = residual.contiguous().view(-1, n) if residual is not None else None
    block = _block(n)
    if m > 0:
        # absent tensors go to the kernel as None (a null pointer its constexpr flags never touch)
        _norm_fwd_kernel[(m,)](x2, r2, weight, bias, y, s if residual is not None else None,
                               None if is_rms else mean, rstd, n, eps,
                               HAS_RESIDUAL=residual is not None, HAS_WEIGHT=weight is not None,
                               HAS_BIAS=bias is not None, IS_RMS=is_rms, BLOCK_N=block,
                               num_warps=warps_for(block))
    return y.view(x.shape), s.view(x.shape) if residual is not None else s, mean, rstd


@norm_fwd.register_fake
def _(x, residual, weight, bias, eps, is_rms):
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    s = torch.empty_like(x) if residual is not None else _empty(x)
    mean = x.new_empty(0 if is_rms else m, dtype=torch.float32)
    return torch.empty_like(x), s, mean, x.new_empty(m, dtype=torch.float32)


@torch.library.custom_op("mlperf_kernels::norm_bwd", mutates_args=())
def norm_bwd(dy: torch.Tensor, dsum: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor | None,
             mean: torch.Tensor, rstd: torch.Tensor, has_bias: bool, is_rms: bool
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    m = x2.shape[0]
    dx = torch.empty_like(x2)
    programs = max(1, min(m, num_programs_hint(x.device)))
    rows_per_program = triton.cdiv(m, programs) if m else 1
    # Zero-filled only when there are no rows (then no program writes its partial).
    new_partial = x.new_empty if m else x.new_zeros
    dw_partial = new_partial((programs, n), dtype=torch.float32) if weight is not None else None
    db_partial = new_partial((programs, n), dtype=torch.float32) if has_bias else None
    block = _block(n)
    if m > 0:
        _norm_bwd_kernel[(programs,)](dy.contiguous().view(-1, n),
                                      dsum.contiguous().view(-1, n) if dsum is not None else None,
                                      x2, weight, None if is_rms else mean, rstd, dx, dw_partial, db_partial, m, n,
                                      rows_per_program, HAS_DSUM=dsum is not None,
                                      HAS_WEIGHT=weight is not None, HAS_BIAS=has_bias, IS_RMS=is_rms,
                                      BLOCK_N=block, num_warps=warps_for(block))
    param_dtype = weight.dtype if weight is not None else x.dtype
    dw = dw_partial.sum(0).to(param_dtype) if weight is not None else _empty(x)
    db = db_partial.sum(0).to(param_dtype) if has_bias else _empty(x)
    return dx.view(x.shape), dw, db


@norm_bwd.register_fake
def _(dy, dsum, x, weight, mean, rstd, has_bias, is_rms):
    n = x.shape[-1]
    dw = torch.empty_like(weight) if weight is not None else _empty(x)
    db = x.new_empty(n, dtype=weight.dtype if weight is not None else x.dtype) if has_bias else _empty(x)
    return torch.empty_like(x), dw, db


def _setup_context(ctx, inputs, output):
    x, residual, weight, bias, eps, is_rms = inputs
    _, s, mean, rstd = output
    ctx.save_for_backward(s if residual is not None else x, weight, mean, rstd)
    ctx.has_residual, ctx.has_bias, ctx.is_rms = residual is not None, bias is not None, is_rms
    ctx.mark_non_differentiable(mean, rstd)
    ctx.set_materialize_grads(False)  # an unused returned sum must not cost a zero-filled gradient


def _backward(ctx, dy, dsum, _dmean, _drstd):
    x, weight, mean, rstd = ctx.saved_tensors
    if dy is None:
        dy = torch.zeros_like(x)
    dx, dw, db = torch.ops.mlperf_kernels.norm_bwd(dy, dsum if ctx.has_residual else None, x, weight, mean,
                                                   rstd, ctx.has_bias, ctx.is_rms)
    return (dx, dx if ctx.has_residual else None, dw if weight is not None else None,
            db if ctx.has_bias else None, None, None)


norm_fwd.register_autograd(_backward, setup_context=_setup_context)


class NormFunction(torch.autograd.Function):
    """Autograd for the fused norm: forward and backward are the custom ops above (so torch.compile sees
    two opaque kernels), with the same context logic as the ops' own registered autograd."""

    @staticmethod
    def forward(x, residual, weight, bias, eps, is_rms):
        return torch.ops.mlperf_kernels.norm_fwd(x, residual, weight, bias, eps, is_rms)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)

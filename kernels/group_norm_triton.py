"""The Triton GroupNorm(+SiLU) kernels behind kernels/group_norm.py (imported only when they run).

One program per (sample, group). A group is `cpg` channels of HW elements each; the kernels walk it in tiles of
BLOCK_S spatial positions x all its channels, addressing x as x[b, c, s] = X + b*sB + c*sC + s*sS, which covers
NCHW (sS = 1: the spatial axis is contiguous) and channels_last (sC = 1, sS = C: the group's channels are)
without a copy. Statistics are fp32 and two-pass (mean, then
the centred sum of squares), as accurate as torch's. The backward recomputes the pre-activation from x and the
saved (mean, rstd) instead of storing it, and writes per-(sample, channel) partial sums for the weight and
bias gradients, which torch reduces over the batch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreting


@triton.jit
def _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets and mask of a BLOCK_S x BLOCK_C tile (spatial x channel) of one group."""
    s = s0 + tl.arange(0, BLOCK_S)
    c = tl.arange(0, BLOCK_C)
    mask = (s[:, None] < HW) & (c[None, :] < CPG)
    return base + (c0 + c)[None, :] * sC + s[:, None] * sS, mask, c


@triton.jit
def _group_stats(X, base, c0, sC, sS, HW, CPG, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    total = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for s0 in range(0, HW, BLOCK_S):
        offs, mask, _ = _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
        total += tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    n = CPG * HW
    mean = tl.sum(tl.sum(total, axis=1), axis=0) / n
    sq = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for s0 in range(0, HW, BLOCK_S):
        offs, mask, _ = _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
        d = tl.where(mask, tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean, 0.0)
        sq += d * d
    return mean, tl.sum(tl.sum(sq, axis=1), axis=0) / n


@triton.jit
def _affine(W, B, c0, c, CPG, HAS_AFFINE: tl.constexpr):
    if HAS_AFFINE:
        w = tl.load(W + c0 + c, mask=c < CPG, other=0.0).to(tl.float32)
        b = tl.load(B + c0 + c, mask=c < CPG, other=0.0).to(tl.float32)
    else:
        w = tl.where(c < CPG, 1.0, 0.0)
        b = tl.zeros(c.shape, dtype=tl.float32)
    return w, b


@triton.jit
def _gn_fwd_kernel(X, W, B, Y, MEAN, RSTD, sB, sC, sS, C, HW, CPG, G, eps,
                   HAS_AFFINE: tl.constexpr, SILU: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b, g = pid // G, pid % G
    base = b.to(tl.int64) * sB
    c0 = g * CPG
    mean, var = _group_stats(X, base, c0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
    rstd = 1.0 / tl.sqrt(var + eps)
    tl.store(MEAN + pid, mean)
    tl.store(RSTD + pid, rstd)
    w_c, b_c = _affine(W, B, c0, tl.arange(0, BLOCK_C), CPG, HAS_AFFINE)
    w, bias = w_c[None, :], b_c[None, :]
    for s0 in range(0, HW, BLOCK_S):
        offs, mask, _ = _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        z = (x - mean) * rstd * w + bias
        if SILU:
            z = z / (1.0 + tl.exp(-z))
        tl.store(Y + offs, z.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _dz(DY, X, offs, mask, mean, rstd, w, bias, SILU: tl.constexpr):
    """(dL/d pre-activation, xhat) of one tile, both zero outside the mask."""
    xhat = tl.where(mask, (tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - mean) * rstd, 0.0)
    dz = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)
    if SILU:
        z = xhat * w + bias
        sig = 1.0 / (1.0 + tl.exp(-z))
        dz = dz * sig * (1.0 + z * (1.0 - sig))
    return tl.where(mask, dz, 0.0), xhat


@triton.jit
def _gn_bwd_kernel(DY, X, W, B, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL, sB, sC, sS, C, HW, CPG, G,
                   HAS_AFFINE: tl.constexpr, SILU: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    b, g = pid // G, pid % G
    base = b.to(tl.int64) * sB
    c0 = g * CPG
    mean = tl.load(MEAN + pid)
    rstd = tl.load(RSTD + pid)
    c = tl.arange(0, BLOCK_C)
    w_c, b_c = _affine(W, B, c0, c, CPG, HAS_AFFINE)
    w, bias = w_c[None, :], b_c[None, :]
    # pass 1: per-channel sums of dz * xhat and dz (the affine gradients); their w-weighted group totals are
    # the sums of dxhat * xhat and dxhat that dx needs
    dw = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    db = tl.zeros([BLOCK_S, BLOCK_C], dtype=tl.float32)
    for s0 in range(0, HW, BLOCK_S):
        offs, mask, _ = _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
        dz, xhat = _dz(DY, X, offs, mask, mean, rstd, w, bias, SILU)
        dw += dz * xhat
        db += dz
    dw_c = tl.sum(dw, axis=0)
    db_c = tl.sum(db, axis=0)
    if HAS_AFFINE:
        tl.store(DW_PARTIAL + b * C + c0 + c, dw_c, mask=c < CPG)
        tl.store(DB_PARTIAL + b * C + c0 + c, db_c, mask=c < CPG)
    n = CPG * HW
    m1 = tl.sum(db_c * w_c, axis=0) / n
    m2 = tl.sum(dw_c * w_c, axis=0) / n
    # pass 2: dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dz * w
    for s0 in range(0, HW, BLOCK_S):
        offs, mask, _ = _tile(base, c0, s0, sC, sS, HW, CPG, BLOCK_S, BLOCK_C)
        dz, xhat = _dz(DY, X, offs, mask, mean, rstd, w, bias, SILU)
        dx = rstd * (dz * w - m1 - xhat * m2)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)


def _layout(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """(x or a contiguous copy, sB, sC, sS, HW). NCHW-contiguous and channels_last tensors are taken as they are
    (their spatial axes flatten to one stride, and empty_like keeps their layout for y and dx); anything else
    (a strided view) is copied to NCHW first."""
    hw = 1
    for size in x.shape[2:]:
        hw *= size
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    dense = x.is_contiguous() or (x.dim() in formats and x.is_contiguous(memory_format=formats[x.dim()]))
    if not dense:
        x = x.contiguous()
    return x, x.stride(0), x.stride(1), x.stride(-1) if x.dim() > 2 else 1, hw


def _blocks(hw: int, cpg: int) -> dict:
    """A tile of all the group's channels by BLOCK_S spatial positions: about 4096 elements on a GPU (untuned:
    no GPU was available to measure), 256 under the interpreter, where each loop iteration is Python."""
    block_c = triton.next_power_of_2(max(cpg, 1))
    budget = 256 if interpreting() else 4096
    return {"BLOCK_S": max(1, min(triton.next_power_of_2(max(hw, 1)), budget // block_c)), "BLOCK_C": block_c}


class GroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, groups, weight, bias, eps, silu):
        x, s_b, s_c, s_s, hw = _layout(x)
        b, c = x.shape[:2]
        y = torch.empty_like(x)
        mean = torch.empty(b * groups, device=x.device, dtype=torch.float32)
        rstd = torch.empty_like(mean)
        if x.numel():
            _gn_fwd_kernel[(b * groups,)](x, weight, bias, y, mean, rstd, s_b, s_c, s_s, c, hw, c // groups, groups,
                                          eps, HAS_AFFINE=weight is not None, SILU=silu, **_blocks(hw, c // groups))
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.groups, ctx.silu = groups, silu
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        groups = ctx.groups
        b, c = x.shape[:2]
        x, s_b, s_c, s_s, hw = _layout(x)
        if dy.stride() != x.stride():  # the kernel addresses dy, x and dx alike
            x, dy = x.contiguous(), dy.contiguous()
            x, s_b, s_c, s_s, hw = _layout(x)
        dx = torch.empty_like(x)
        affine = weight is not None
        dw_partial = torch.zeros(b, c, device=x.device, dtype=torch.float32) if affine else None
        db_partial = torch.zeros_like(dw_partial) if affine else None
        if x.numel():
            _gn_bwd_kernel[(b * groups,)](dy, x, weight, bias, mean, rstd, dx, dw_partial, db_partial, s_b, s_c, s_s,
                                          c, hw, c // groups, groups, HAS_AFFINE=affine, SILU=ctx.silu,
                                          **_blocks(hw, c // groups))
        dw = dw_partial.sum(0).to(weight.dtype) if affine else None
        db = db_partial.sum(0).to(bias.dtype) if affine else None
        return dx, None, dw, db, None, None

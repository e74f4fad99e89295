"""Fused out = residual + dropout(x + bias, p), with a counter-based (Philox) mask and its backward.

The mask is never stored: element i (row-major index over x) is kept when
`philox_uniform(seed, offset + i) >= p`, the same draw as Triton's `tl.rand(seed, offset + i)`, and the
backward regenerates it from (seed, offset). `philox_uniform` below reproduces tl.rand bit for bit in
torch, so the reference path draws the same mask and any run is reproducible from (seed, offset). A
caller that applies dropout to several tensors with one seed advances `offset` by each tensor's numel.

Rounding follows eager torch in x's dtype: t = x + bias is rounded, then t * 1/(1-p) (fp32 product) is
rounded, then added to the residual and rounded. So p = 0 gives exactly `residual + (x + bias)` and the
kernel agrees with the reference to the last bit wherever the hardware does not contract the
arithmetic differently.

Shapes: x_MN flattened to M rows of N features, bias_N, residual like x.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import interpreting, use_triton

_M32 = 0xFFFFFFFF
_ROUND_A, _ROUND_B, _KEY_A, _KEY_B = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85


def _mul_hi_lo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a * b for a 32-bit constant a and uint32 values b held in int64 (the
    full product would overflow int64, so b is split into 16-bit halves)."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo
    return (p_hi + (p_lo >> 16)) >> 16, (((p_hi & 0xFFFF) << 16) + p_lo) & _M32


def philox_uniform(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) float32 equal to Triton's `tl.rand(seed, counters)` for int64 counters: Philox
    4x32 with 10 rounds, counter (lo, hi, 0, 0), key (seed lo, seed hi), first output word."""
    c0, c1 = counters & _M32, (counters >> 32) & _M32
    c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _M32, (k1 + _KEY_B) & _M32
    signed = torch.where(c0 >= 2**31, c0 - 2**32, c0)
    signed = torch.where(signed < 0, -signed - 1, signed)  # ~x for negative int32, as tl.rand does
    return signed.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def dropout_keep_mask(shape, p: float, seed: int, offset: int = 0, device=None) -> torch.Tensor:
    """The boolean keep mask the kernel uses for a tensor of `shape` (row-major element order)."""
    numel = int(torch.Size(shape).numel())
    counters = torch.arange(numel, dtype=torch.int64, device=device) + offset
    return (philox_uniform(seed, counters) >= p).view(shape)


def bias_dropout_add_ref(x, bias, residual, p: float, seed: int, offset: int = 0) -> torch.Tensor:
    t = x + bias if bias is not None else x
    if p == 0.0:
        return residual + t
    keep = dropout_keep_mask(x.shape, p, seed, offset, x.device)
    compute = torch.promote_types(t.dtype, torch.float32)
    dropped = torch.where(keep, t.to(compute) * torch.tensor(1.0 / (1.0 - p), dtype=torch.float32), 0.0)
    return residual + dropped.to(t.dtype)


@triton.jit
def _keep(seed, offset, rows, cols, N, p):
    return tl.rand(seed, offset + rows[:, None].to(tl.int64) * N + cols[None, :]) >= p


@triton.jit
def _bda_fwd_kernel(X, B, R, OUT, M, N, p, scale, seed, offset, HAS_BIAS: tl.constexpr,
                    DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    offs = rows[:, None].to(tl.int64) * N + cols[None, :]
    t = tl.load(X + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        t = (t.to(tl.float32) + tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :])
        t = t.to(X.dtype.element_ty)
    if DROPOUT:  # p = 0 (evaluation) skips the Philox rounds
        t = tl.where(_keep(seed, offset, rows, cols, N, p), t.to(tl.float32) * scale, 0.0).to(X.dtype.element_ty)
    out = t.to(tl.float32) + tl.load(R + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bda_bwd_kernel(DOUT, DX, DB_PARTIAL, M, N, p, scale, seed, offset, HAS_BIAS: tl.constexpr,
                    DROPOUT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    ROWS_PER_PROGRAM: tl.constexpr):
    pid_m = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r in range(0, ROWS_PER_PROGRAM, BLOCK_M):
        rows = pid_m * ROWS_PER_PROGRAM + r + tl.arange(0, BLOCK_M)
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        offs = rows[:, None].to(tl.int64) * N + cols[None, :]
        dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
        if DROPOUT:
            dx = tl.where(_keep(seed, offset, rows, cols, N, p) & mask, dout * scale, 0.0).to(DX.dtype.element_ty)
        else:
            dx = tl.where(mask, dout, 0.0).to(DX.dtype.element_ty)
        tl.store(DX + offs, dx, mask=mask)
        db += tl.sum(dx.to(tl.float32), axis=0)  # sums the rounded dx, as torch's bias gradient does
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid_m * N + cols, db, mask=cols < N)


def _tiles(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, ROWS_PER_PROGRAM), as bias_gelu: ~4k elements per tile (untuned, no GPU here)."""
    block_n = min(triton.next_power_of_2(max(n, 1)), 64 if interpreting() else 256)
    block_m = 4 if interpreting() else max(1, 4096 // block_n)
    return block_m, block_n, block_m * (2 if interpreting() else 8)


@torch.library.custom_op("mlperf_kernels::bias_dropout_add_fwd", mutates_args=())
def bias_dropout_add_fwd(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, p: float,
                         seed: int, offset: int) -> torch.Tensor:
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    out = torch.empty_like(residual.contiguous()).view(-1, n)
    block_m, block_n, _ = _tiles(n)
    if x2.numel():
        grid = (triton.cdiv(x2.shape[0], block_m), triton.cdiv(n, block_n))
        _bda_fwd_kernel[grid](x2, bias, residual.contiguous().view(-1, n), out, x2.shape[0], n, p, 1.0 / (1.0 - p),
                              seed, offset, HAS_BIAS=bias is not None, DROPOUT=p > 0.0, BLOCK_M=block_m,
                              BLOCK_N=block_n)
    return out.view(x.shape)


@bias_dropout_add_fwd.register_fake
def _(x, bias, residual, p, seed, offset):
    return torch.empty_like(residual)


@torch.library.custom_op("mlperf_kernels::bias_dropout_add_bwd", mutates_args=())
def bias_dropout_add_bwd(dout: torch.Tensor, x_dtype: torch.dtype, has_bias: bool, p: float, seed: int,
                         offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = dout.shape[-1]
    d2 = dout.contiguous().view(-1, n)
    m = d2.shape[0]
    dx = torch.empty(d2.shape, dtype=x_dtype, device=dout.device)
    block_m, block_n, rows_per_program = _tiles(n)
    programs_m = max(1, triton.cdiv(m, rows_per_program))
    partial = dout.new_zeros((programs_m, n), dtype=torch.float32) if has_bias else None
    if d2.numel():
        _bda_bwd_kernel[(programs_m, triton.cdiv(n, block_n))](
            d2, dx, partial, m, n, p, 1.0 / (1.0 - p), seed, offset, HAS_BIAS=has_bias, DROPOUT=p > 0.0,
            BLOCK_M=block_m, BLOCK_N=block_n, ROWS_PER_PROGRAM=rows_per_program)
    dbias = partial.sum(0).to(x_dtype) if has_bias else dout.new_empty(0)
    return dx.view(dout.shape), dbias


@bias_dropout_add_bwd.register_fake
def _(dout, x_dtype, has_bias, p, seed, offset):
    dbias = dout.new_empty(dout.shape[-1], dtype=x_dtype) if has_bias else dout.new_empty(0)
    return torch.empty(dout.shape, dtype=x_dtype, device=dout.device), dbias


def _setup_context(ctx, inputs, output):
    x, bias, residual, p, seed, offset = inputs
    ctx.x_dtype, ctx.has_bias, ctx.p, ctx.seed, ctx.offset = x.dtype, bias is not None, p, seed, offset


def _backward(ctx, dout):
    dx, dbias = torch.ops.mlperf_kernels.bias_dropout_add_bwd(dout, ctx.x_dtype, ctx.has_bias, ctx.p, ctx.seed,
                                                              ctx.offset)
    return dx, dbias if ctx.has_bias else None, dout, None, None, None


bias_dropout_add_fwd.register_autograd(_backward, setup_context=_setup_context)


class BiasDropoutAddFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, bias, residual, p, seed, offset):
        return torch.ops.mlperf_kernels.bias_dropout_add_fwd(x, bias, residual, p, seed, offset)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


def bias_dropout_add(x: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor, p: float,
                     training: bool = True, seed: int | None = None, offset: int = 0) -> torch.Tensor:
    """residual + dropout(x + bias, p) (no dropout unless `training`). Without a seed one is drawn from
    torch's default CPU generator (no device sync), so torch.manual_seed makes runs repeat."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError("residual must have x's shape and dtype")
    p = p if training else 0.0
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if p > 0 else 0
    if not use_triton(x, bias, residual):
        return bias_dropout_add_ref(x, bias, residual, p, seed, offset)
    return BiasDropoutAddFunction.apply(x, bias, residual, p, seed, offset)

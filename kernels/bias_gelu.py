"""Fused bias + GELU: y = gelu(x + bias), exact (erf) or tanh-approximated, with its backward.

The transformer MLP's first projection is `gelu(x @ W1 + b1)`; with the GEMM done without its bias, this
kernel reads x once, and the backward reads (dy, x) and writes dx plus the bias gradient, instead of
eager torch's separate add, GELU and reduction. Only x and the bias are saved for the backward: the
pre-activation x + bias is recomputed, never stored. u = x + bias is formed in fp32 and not rounded to
x's dtype first (torch eager rounds it, so the kernel is the more accurate of the two).

Shapes: x_MN, the input flattened to M rows of N features; bias_N. The backward walks tiles of
BLOCK_M x BLOCK_N and each program accumulates its column sums of dx over ROWS_PER_PROGRAM rows in
fp32, so the bias gradient costs a (M / ROWS_PER_PROGRAM) x N partial buffer rather than a second
pass over dx.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import interpreting, use_triton

APPROXIMATIONS = ("none", "tanh")


def bias_gelu_ref(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x + bias if bias is not None else x, approximate=approximate)


@triton.jit
def _tanh(z):
    # tanh from exp, needing no libdevice (the interpreter has none); |z| is clamped at 15, where tanh is
    # already +-1 in fp32, so exp never overflows
    z = tl.minimum(tl.maximum(z, -15.0), 15.0)
    return 1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)


@triton.jit
def _gelu_and_grad(u, APPROX_TANH: tl.constexpr):
    if APPROX_TANH:
        k0 = 0.7978845608028654  # sqrt(2 / pi)
        t = _tanh(k0 * (u + 0.044715 * u * u * u))
        y = 0.5 * u * (1.0 + t)
        dy_du = 0.5 * (1.0 + t) + 0.5 * u * (1.0 - t * t) * k0 * (1.0 + 3.0 * 0.044715 * u * u)
    else:
        y = 0.5 * u * (1.0 + tl.math.erf(u * 0.7071067811865476))
        dy_du = 0.5 * (1.0 + tl.math.erf(u * 0.7071067811865476)) + u * tl.exp(-0.5 * u * u) * 0.3989422804014327
    return y, dy_du


@triton.jit
def _tile(row0, pid_n, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = row0 + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    return rows[:, None].to(tl.int64) * N + cols[None, :], cols, mask


@triton.jit
def _bias_gelu_fwd_kernel(X, B, Y, M, N, HAS_BIAS: tl.constexpr, APPROX_TANH: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    offs, cols, mask = _tile(pid_m * BLOCK_M, pid_n, M, N, BLOCK_M, BLOCK_N)
    u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    y, _ = _gelu_and_grad(u, APPROX_TANH)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd_kernel(DY, X, B, DX, DB_PARTIAL, M, N, HAS_BIAS: tl.constexpr, APPROX_TANH: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROWS_PER_PROGRAM: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        b = tl.load(B + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for r in range(0, ROWS_PER_PROGRAM, BLOCK_M):
        offs, _, mask = _tile(pid_m * ROWS_PER_PROGRAM + r, pid_n, M, N, BLOCK_M, BLOCK_N)
        u = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            u += b
        _, dy_du = _gelu_and_grad(u, APPROX_TANH)
        dx = tl.where(mask, tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32) * dy_du, 0.0)
        tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
        db += tl.sum(dx, axis=0)
    if HAS_BIAS:
        tl.store(DB_PARTIAL + pid_m * N + cols, db, mask=cols < N)


def _tiles(n: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, ROWS_PER_PROGRAM). About 4k elements per tile on a GPU (untuned: no GPU was
    available to measure); small tiles under the interpreter, where each program is a Python call."""
    block_n = min(triton.next_power_of_2(max(n, 1)), 64 if interpreting() else 256)
    block_m = 4 if interpreting() else max(1, 4096 // block_n)
    return block_m, block_n, block_m * (2 if interpreting() else 8)


def _check(approximate: str) -> bool:
    if approximate not in APPROXIMATIONS:
        raise ValueError(f"approximate={approximate!r}: expected one of {APPROXIMATIONS}")
    return approximate == "tanh"


@torch.library.custom_op("mlperf_kernels::bias_gelu_fwd", mutates_args=())
def bias_gelu_fwd(x: torch.Tensor, bias: torch.Tensor | None, approximate: str) -> torch.Tensor:
    tanh = _check(approximate)
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    m = x2.shape[0]
    y = torch.empty_like(x2)
    block_m, block_n, _ = _tiles(n)
    if x2.numel():
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
        _bias_gelu_fwd_kernel[grid](x2, bias, y, m, n, HAS_BIAS=bias is not None, APPROX_TANH=tanh,
                                    BLOCK_M=block_m, BLOCK_N=block_n)
    return y.view(x.shape)


@bias_gelu_fwd.register_fake
def _(x, bias, approximate):
    return torch.empty_like(x)


@torch.library.custom_op("mlperf_kernels::bias_gelu_bwd", mutates_args=())
def bias_gelu_bwd(dy: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None, approximate: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    tanh = _check(approximate)
    n = x.shape[-1]
    x2 = x.contiguous().view(-1, n)
    m = x2.shape[0]
    dx = torch.empty_like(x2)
    block_m, block_n, rows_per_program = _tiles(n)
    programs_m = max(1, triton.cdiv(m, rows_per_program))
    partial = x.new_zeros((programs_m, n), dtype=torch.float32) if bias is not None else None
    if x2.numel():
        _bias_gelu_bwd_kernel[(programs_m, triton.cdiv(n, block_n))](
            dy.contiguous().view(-1, n), x2, bias, dx, partial, m, n, HAS_BIAS=bias is not None,
            APPROX_TANH=tanh, BLOCK_M=block_m, BLOCK_N=block_n, ROWS_PER_PROGRAM=rows_per_program)
    dbias = partial.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx.view(x.shape), dbias


@bias_gelu_bwd.register_fake
def _(dy, x, bias, approximate):
    return torch.empty_like(x), torch.empty_like(bias) if bias is not None else x.new_empty(0)


def _setup_context(ctx, inputs, output):
    x, bias, approximate = inputs
    ctx.save_for_backward(x, bias)
    ctx.approximate = approximate


def _backward(ctx, dy):
    x, bias = ctx.saved_tensors
    dx, dbias = torch.ops.mlperf_kernels.bias_gelu_bwd(dy, x, bias, ctx.approximate)
    return dx, dbias if bias is not None else None, None


bias_gelu_fwd.register_autograd(_backward, setup_context=_setup_context)


class BiasGeluFunction(torch.autograd.Function):
    @staticmethod
    def forward(x, bias, approximate):
        return torch.ops.mlperf_kernels.bias_gelu_fwd(x, bias, approximate)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


def bias_gelu(x: torch.Tensor, bias: torch.Tensor | None, approximate: str = "none") -> torch.Tensor:
    """gelu(x + bias) over the last dimension of x; `approximate` is "none" (erf) or "tanh", as F.gelu."""
    _check(approximate)
    if bias is not None and bias.shape != (x.shape[-1],):
        raise ValueError(f"bias shape {tuple(bias.shape)} does not match the last dimension of x {x.shape}")
    if not use_triton(x, bias):
        return bias_gelu_ref(x, bias, approximate)
    return BiasGeluFunction.apply(x, bias, approximate)


"""Softmax cross-entropy over large vocabularies, without fp32 probabilities, gradient made in the forward.

    loss = cross_entropy(logits_MV, target_M, ignore_index=-100, label_smoothing=0.0, reduction="mean")

Same contract as `F.cross_entropy` for class-index targets (label smoothing, ignore_index, reductions
mean / sum / none; mean divides by the number of non-ignored targets), except that the loss is fp32
whatever the logits' dtype (the value logged and reduced).

One program per row walks the vocabulary in BLOCK_V chunks twice: first an online log-sum-exp
(running max and rescaled sum, in fp32), then the gradient of the row's loss,
    d loss / d x_j = softmax_j - (1 - eps) [j == target] - eps / V      (0 for ignored rows),
written in the logits' dtype. So no (M, V) fp32 tensor ever exists, and the backward is one
elementwise scale of the stored gradient by the upstream gradient of each row's loss. With
`grad_in_logits=True` the gradient overwrites the logits buffer (Liger-Kernel's trick: the vocabulary
projection's backward never needs its output, so those bytes are free), saving one logits-sized
buffer; that eager-only path bumps the logits' version, so autograd raises if anything else saved
them. The default path returns the gradient alongside and is what torch.compile traces.

The vocab-parallel form (each tensor-parallel rank holds a vocabulary shard) is cross_entropy_parallel.py;
it reuses the chunk loops below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.dispatch import interpreting, use_triton

REDUCTIONS = ("mean", "sum", "none")


def cross_entropy_ref(logits, target, ignore_index: int = -100, label_smoothing: float = 0.0,
                      reduction: str = "mean") -> torch.Tensor:
    """torch's cross-entropy computed in (at least) fp32, with the loss returned in fp32."""
    upcast = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.cross_entropy(upcast.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction=reduction)


@triton.jit
def _online_logsumexp(x_row, V, BLOCK_V: tl.constexpr):
    """Running max m and sum s of exp(x - m) over the row in chunks; also the plain sum of the row
    (needed by label smoothing). Every chunk holds at least one real column, so m is finite after the
    first and exp(-inf - m) = 0 handles the padding."""
    m = float("-inf")
    s = 0.0
    total = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        total += tl.sum(tl.where(cols < V, x, 0.0), axis=0)
        m = m_new
    return m, s, total


@triton.jit
def _write_row_grad(x_row, g_row, V, lse, local_target, row_weight, uniform, on_target,
                    BLOCK_V: tl.constexpr):
    """g_j = row_weight * (exp(x_j - lse) - uniform - on_target [j == local_target]). g_row may be x_row
    (in place): each chunk is read before it is overwritten."""
    for start in range(0, V, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(x_row + cols, mask=cols < V, other=0.0).to(tl.float32)
        g = tl.exp(x - lse) - uniform - tl.where(cols == local_target, on_target, 0.0)
        tl.store(g_row + cols, (g * row_weight).to(g_row.dtype.element_ty), mask=cols < V)


@triton.jit
def _ce_fwd_kernel(X, TARGET, GRAD, LOSS, LSE, stride_x, stride_g, V, ignore_index, smoothing,
                   BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    target = tl.load(TARGET + row)
    valid = target != ignore_index
    safe_target = tl.where(valid, target, 0)  # an ignored row's -100 must not become an address
    m, s, total = _online_logsumexp(x_row, V, BLOCK_V)
    lse = m + tl.log(s)
    x_target = tl.load(x_row + safe_target).to(tl.float32)
    loss = lse - (1.0 - smoothing) * x_target - smoothing / V * total
    tl.store(LOSS + row, tl.where(valid, loss, 0.0))
    tl.store(LSE + row, lse)
    _write_row_grad(x_row, GRAD + row * stride_g, V, lse, safe_target, valid.to(tl.float32), smoothing / V,
                    1.0 - smoothing, BLOCK_V)


def block_v(v: int) -> int:
    """Vocabulary chunk: 4096 columns on a GPU (a starting point, not yet measured: no GPU was available),
    256 under the interpreter so that the chunk loop is exercised on small test vocabularies."""
    return min(triton.next_power_of_2(v), 256 if interpreting() else 4096)


def _launch(logits2, target1, grad2, ignore_index: int, label_smoothing: float):
    m, v = logits2.shape
    loss = logits2.new_empty(m, dtype=torch.float32)
    lse = logits2.new_empty(m, dtype=torch.float32)
    if m:
        block = block_v(v)
        _ce_fwd_kernel[(m,)](logits2, target1, grad2, loss, lse, logits2.stride(0), grad2.stride(0), v,
                             ignore_index, label_smoothing, BLOCK_V=block, num_warps=8 if block >= 2048 else 4)
    return loss, lse


def _rows(logits: torch.Tensor, target: torch.Tensor):
    logits2 = logits.reshape(-1, logits.shape[-1])
    if logits2.stride(-1) != 1:
        logits2 = logits2.contiguous()
    return logits2, target.reshape(-1).contiguous()


@torch.library.custom_op("mlperf_kernels::cross_entropy_fwd", mutates_args=())
def cross_entropy_fwd(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, label_smoothing: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-row loss fp32, per-row log-sum-exp fp32, gradient of the per-row losses (M, V))."""
    logits2, target1 = _rows(logits, target)
    grad = torch.empty(logits2.shape, dtype=logits.dtype, device=logits.device)
    loss, lse = _launch(logits2, target1, grad, ignore_index, label_smoothing)
    return loss, lse, grad


@cross_entropy_fwd.register_fake
def _(logits, target, ignore_index, label_smoothing):
    m = target.numel()
    return (logits.new_empty(m, dtype=torch.float32), logits.new_empty(m, dtype=torch.float32),
            logits.new_empty((m, logits.shape[-1])))


def scale_rows(grad: torch.Tensor, dloss: torch.Tensor, shape, inplace: bool = False) -> torch.Tensor:
    """The whole backward: each row's stored gradient times the upstream gradient of that row's loss."""
    factor = dloss.to(torch.float32).reshape(-1, 1)
    out = grad.mul_(factor) if inplace else (grad * factor).to(grad.dtype)
    return out.view(shape)


def _setup_context(ctx, inputs, output):
    logits, _, _, _ = inputs
    ctx.save_for_backward(output[2])
    ctx.logits_shape = logits.shape


def _backward(ctx, dloss, _dlse, _dgrad):
    (grad,) = ctx.saved_tensors
    return scale_rows(grad, dloss, ctx.logits_shape), None, None, None


cross_entropy_fwd.register_autograd(_backward, setup_context=_setup_context)


class CrossEntropyFunction(torch.autograd.Function):
    """Per-row losses; `grad_in_logits` chooses the in-place (eager) or the custom-op (traceable) path."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index, label_smoothing, grad_in_logits):
        if grad_in_logits:
            logits2, target1 = _rows(logits, target)
            if logits2.data_ptr() != logits.data_ptr() or not logits.is_contiguous():
                raise ValueError("grad_in_logits needs contiguous logits")
            loss, _ = _launch(logits2, target1, logits2, ignore_index, label_smoothing)
            # A Triton write is invisible to autograd's version counter: bump it, so that any other node
            # that saved these logits fails loudly at its backward instead of reading gradients.
            torch.autograd.graph.increment_version(logits)
            grad = logits2.detach()  # storage shared, no view tracking: the backward scales it in place
        else:
            loss, _, grad = torch.ops.mlperf_kernels.cross_entropy_fwd(logits, target, ignore_index,
                                                                       label_smoothing)
        ctx.save_for_backward(grad)
        ctx.logits_shape, ctx.inplace = logits.shape, grad_in_logits
        return loss

    @staticmethod
    def backward(ctx, dloss):
        (grad,) = ctx.saved_tensors
        return scale_rows(grad, dloss, ctx.logits_shape, inplace=ctx.inplace), None, None, None, None


def reduce_rows(loss_rows: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str):
    if reduction == "none":
        return loss_rows.view(target.shape)
    if reduction == "sum":
        return loss_rows.sum()
    return loss_rows.sum() / (target != ignore_index).sum()  # nan when every target is ignored, as torch


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -100,
                  label_smoothing: float = 0.0, reduction: str = "mean", grad_in_logits: bool = False
                  ) -> torch.Tensor:
    """Cross-entropy of logits (..., V) against class indices (...); see the module docstring."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target shape {tuple(target.shape)} != logits shape without the vocabulary "
                         f"{tuple(logits.shape[:-1])}")
    if not use_triton(logits, target):
        return cross_entropy_ref(logits, target, ignore_index, label_smoothing, reduction).view(
            target.shape if reduction == "none" else ())
    loss_rows = CrossEntropyFunction.apply(logits, target, ignore_index, float(label_smoothing), grad_in_logits)
    return reduce_rows(loss_rows, target, ignore_index, reduction)

"""Vocab-parallel softmax cross-entropy: each tensor-parallel rank holds the logits of one vocabulary shard.

    loss = vocab_parallel_cross_entropy(logits_shard_MVr, target_M, vocab_start, vocab_size, group)

Each rank runs one pass over its shard and produces four fp32 numbers per row (`shard_stats`):
    max_r      the row's largest logit in the shard
    sumexp_r   sum over the shard of exp(x - max_r)
    target_r   the target's logit if the target lies in this shard, else 0
    total_r    sum of the shard's logits (label smoothing needs the sum over the whole vocabulary)
`combine_stats` merges them over the group with one MAX all-reduce (max) and one SUM all-reduce of
(sumexp_r * exp(max_r - max), target_r, total_r), giving every rank the row's log-sum-exp, target logit
and logit sum: 2 * 4 bytes per row on the wire per collective, never the logits. Each rank then writes
its shard's gradient (softmax - smoothing target) in the forward, exactly as the single-device kernel
does, and the backward scales it by the upstream gradient. `merge_stats` is the same combination over a
list of shards held by one process (what the tests use, and a reference for the collective form).

Same ignore_index / label_smoothing / reduction contract and fp32 loss as cross_entropy.py.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels.cross_entropy import REDUCTIONS, _online_logsumexp, _write_row_grad, block_v, reduce_rows
from kernels.dispatch import use_triton


@triton.jit
def _shard_stats_kernel(X, TARGET, STATS, stride_x, V_shard, vocab_start, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    local = tl.load(TARGET + row) - vocab_start
    here = (local >= 0) & (local < V_shard) & (tl.load(TARGET + row) != ignore_index)
    m, s, total = _online_logsumexp(x_row, V_shard, BLOCK_V)
    x_target = tl.load(x_row + tl.where(here, local, 0)).to(tl.float32)
    tl.store(STATS + row * 4 + 0, m)
    tl.store(STATS + row * 4 + 1, s)
    tl.store(STATS + row * 4 + 2, tl.where(here, x_target, 0.0))
    tl.store(STATS + row * 4 + 3, total)


@triton.jit
def _shard_grad_kernel(X, TARGET, LSE, GRAD, stride_x, stride_g, V_shard, V_total, vocab_start, ignore_index,
                       smoothing, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(TARGET + row)
    valid = target != ignore_index
    # a target outside the shard maps to a column that never matches (-1)
    local = tl.where(valid & (target >= vocab_start) & (target < vocab_start + V_shard), target - vocab_start, -1)
    _write_row_grad(X + row * stride_x, GRAD + row * stride_g, V_shard, tl.load(LSE + row), local,
                    valid.to(tl.float32), smoothing / V_total, 1.0 - smoothing, BLOCK_V)


def shard_stats_ref(logits2, target1, vocab_start: int, ignore_index: int) -> torch.Tensor:
    x = logits2.float() if logits2.dtype in (torch.float16, torch.bfloat16) else logits2
    m = x.max(-1).values
    local = target1 - vocab_start
    here = (local >= 0) & (local < x.shape[-1]) & (target1 != ignore_index)
    x_target = x.gather(1, torch.where(here, local, 0).unsqueeze(1)).squeeze(1)
    return torch.stack([m, torch.exp(x - m[:, None]).sum(-1), torch.where(here, x_target, 0.0), x.sum(-1)], 1)


def shard_grad_ref(logits2, target1, lse, vocab_start: int, vocab_size: int, ignore_index: int,
                   smoothing: float) -> torch.Tensor:
    x = logits2.float() if logits2.dtype in (torch.float16, torch.bfloat16) else logits2
    grad = torch.exp(x - lse[:, None].to(x.dtype)) - smoothing / vocab_size
    local = target1 - vocab_start
    here = (local >= 0) & (local < x.shape[-1]) & (target1 != ignore_index)
    hit = torch.zeros_like(grad).scatter_(1, torch.where(here, local, 0).unsqueeze(1), here.to(x.dtype).unsqueeze(1))
    grad = (grad - (1.0 - smoothing) * hit) * (target1 != ignore_index).to(x.dtype)[:, None]
    return grad.to(logits2.dtype)


def shard_stats(logits2: torch.Tensor, target1: torch.Tensor, vocab_start: int, ignore_index: int) -> torch.Tensor:
    """(M, 4) fp32 per-row partials of one shard: max, sum of exp(x - max), target logit or 0, sum."""
    if not use_triton(logits2, target1):
        return shard_stats_ref(logits2, target1, vocab_start, ignore_index)
    m, v = logits2.shape
    stats = logits2.new_empty((m, 4), dtype=torch.float32)
    if m:
        _shard_stats_kernel[(m,)](logits2, target1, stats, logits2.stride(0), v, vocab_start, ignore_index,
                                  BLOCK_V=block_v(v))
    return stats


def shard_grad(logits2, target1, lse, vocab_start: int, vocab_size: int, ignore_index: int,
               smoothing: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """d loss_row / d logits for one shard, in the logits' dtype (into `out`, which may be logits2)."""
    if not use_triton(logits2, target1):
        grad = shard_grad_ref(logits2, target1, lse, vocab_start, vocab_size, ignore_index, smoothing)
        return out.copy_(grad) if out is not None else grad
    out = torch.empty_like(logits2) if out is None else out
    m, v = logits2.shape
    if m:
        _shard_grad_kernel[(m,)](logits2, target1, lse, out, logits2.stride(0), out.stride(0), v, vocab_size,
                                 vocab_start, ignore_index, smoothing, BLOCK_V=block_v(v))
    return out


def _merge(maxes: torch.Tensor, rescaled_sums: torch.Tensor, smoothing: float, vocab_size: int,
           valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-row loss, per-row lse) from the global max and the summed (sumexp, target logit, total)."""
    sumexp, x_target, total = rescaled_sums.unbind(1)
    lse = maxes + torch.log(sumexp)
    loss = lse - (1.0 - smoothing) * x_target - smoothing / vocab_size * total
    return torch.where(valid, loss, 0.0), lse


def merge_stats(stats: list[torch.Tensor], target1, ignore_index: int, smoothing: float, vocab_size: int):
    """combine_stats for shards held by one process: the reference for the collective path."""
    maxes = torch.stack([s[:, 0] for s in stats]).max(0).values
    summed = sum(torch.stack([s[:, 1] * torch.exp(s[:, 0] - maxes), s[:, 2], s[:, 3]], 1) for s in stats)
    return _merge(maxes, summed, smoothing, vocab_size, target1 != ignore_index)


def combine_stats(stats: torch.Tensor, target1, ignore_index: int, smoothing: float, vocab_size: int, group=None):
    """All-reduce one rank's shard stats over `group` (no-op without an initialised process group)."""
    maxes = stats[:, 0].clone()
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1
    if distributed:
        dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=group)
    summed = torch.stack([stats[:, 1] * torch.exp(stats[:, 0] - maxes), stats[:, 2], stats[:, 3]], 1)
    if distributed:
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=group)
    return _merge(maxes, summed, smoothing, vocab_size, target1 != ignore_index)


class VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, vocab_start, vocab_size, group, ignore_index, smoothing):
        logits2 = logits.reshape(-1, logits.shape[-1])
        target1 = target.reshape(-1).contiguous()
        stats = shard_stats(logits2, target1, vocab_start, ignore_index)
        loss, lse = combine_stats(stats, target1, ignore_index, smoothing, vocab_size, group)
        grad = shard_grad(logits2, target1, lse, vocab_start, vocab_size, ignore_index, smoothing)
        ctx.save_for_backward(grad)
        ctx.logits_shape = logits.shape
        return loss

    @staticmethod
    def backward(ctx, dloss):
        (grad,) = ctx.saved_tensors
        scaled = (grad * dloss.to(torch.float32).reshape(-1, 1)).to(grad.dtype)
        return scaled.view(ctx.logits_shape), None, None, None, None, None, None


def vocab_parallel_cross_entropy(logits_shard: torch.Tensor, target: torch.Tensor, vocab_start: int,
                                 vocab_size: int, group=None, ignore_index: int = -100,
                                 label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the full-vocabulary softmax when this rank holds columns
    [vocab_start, vocab_start + logits_shard.shape[-1]) of `vocab_size`. Every rank of `group` must call
    it with its own shard and the same targets; all get the same loss."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: expected one of {REDUCTIONS}")
    if not 0 <= vocab_start <= vocab_size - logits_shard.shape[-1]:
        raise ValueError(f"shard [{vocab_start}, {vocab_start + logits_shard.shape[-1]}) outside vocab {vocab_size}")
    loss_rows = VocabParallelCrossEntropy.apply(logits_shard, target, vocab_start, vocab_size, group,
                                                ignore_index, float(label_smoothing))
    return reduce_rows(loss_rows, target, ignore_index, reduction)

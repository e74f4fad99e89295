"""cross_entropy and its vocab-parallel form (Triton) against fp64 and torch's own cross-entropy; the
references (cross_entropy_ref, shard_stats_ref, shard_grad_ref) first against the textbook formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import (  # noqa: F401 (force_triton: autouse fixture)
    DEVICE,
    assert_textbook_close,
    check_forward_backward,
    check_reference,
    force_triton,
)

from kernels.cross_entropy import cross_entropy, cross_entropy_ref
from kernels.cross_entropy_parallel import (
    merge_stats,
    shard_grad,
    shard_grad_ref,
    shard_stats,
    shard_stats_ref,
    vocab_parallel_cross_entropy,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, vocab): one row; non-power-of-two vocab in 3 chunks of the interpreter's 256; a wide vocab
SHAPES = [(1, 50), (6, 700), (3, 5000)]


def _inputs(rows, vocab, dtype, ignore=False, seed=3):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(rows, vocab, generator=gen) * 4).to(DEVICE, dtype)
    target = torch.randint(0, vocab, (rows,), generator=gen)
    if ignore and rows > 1:
        target[::3] = -100
    return logits, target.to(DEVICE)


def _torch_ce(smoothing, reduction):
    # torch's own implementation in the logits' dtype, the loss cast to fp32 like ours
    return lambda x, t: F.cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction).float()


# The textbook definitions, in elementary ops (never F.cross_entropy / log_softmax, which the reference
# calls). Row i with logits x (V of them) and target t, smoothing e:
#   lse = log sum_j exp(x_j)          (as m + log sum_j exp(x_j - m), m = max_j x_j)
#   loss_i = (1 - e) (lse - x_t) + e (lse - mean_j x_j)   [= (1-e) * -log p_t + e * mean_j -log p_j]
#   d loss_i / d x_j = p_j - (1 - e) [j == t] - e / V,     p_j = exp(x_j - lse)
# ignored rows (t == ignore_index) lose 0 and get 0; "mean" divides by the number of rows not ignored.
def _textbook_rows(x, t, ignore_index, smoothing):
    m = x.max(-1, keepdim=True).values
    lse = (m + torch.log(torch.exp(x - m).sum(-1, keepdim=True))).squeeze(-1)
    valid = t != ignore_index
    x_target = x.gather(-1, torch.where(valid, t, 0).unsqueeze(-1)).squeeze(-1)
    rows = (1.0 - smoothing) * (lse - x_target) + smoothing * (lse - x.sum(-1) / x.shape[-1])
    return torch.where(valid, rows, 0.0), lse, valid


def textbook_cross_entropy(ignore_index=-100, smoothing=0.0, reduction="mean"):
    def ce(logits, target):
        rows, _, valid = _textbook_rows(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index,
                                        smoothing)
        if reduction == "none":
            return rows.view(target.shape)
        return rows.sum() / valid.sum() if reduction == "mean" else rows.sum()
    return ce


def textbook_grad(x, t, ignore_index, smoothing):
    """d loss_row / d x, the analytic formula above (not autograd)."""
    _, lse, valid = _textbook_rows(x, t, ignore_index, smoothing)
    hit = torch.zeros_like(x)
    hit[valid, t[valid]] = 1.0
    return (torch.exp(x - lse[:, None]) - (1.0 - smoothing) * hit - smoothing / x.shape[-1]) * valid[:, None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("smoothing,reduction,ignore", [(0.0, "mean", False), (0.1, "mean", True),
                                                        (0.0, "sum", True), (0.1, "none", False)])
def test_cross_entropy(dtype, shape, smoothing, reduction, ignore):
    logits, target = _inputs(*shape, dtype, ignore)
    # torch's fp32 gradient (log_softmax backward: dy - exp(log p) * sum dy) carries exp's rounding of
    # log p amplified by |log p|, up to ~40 for logits of std 4 over 5000 classes: measured 33 fp32 ulps of
    # the largest gradient, so this test's cap allows 64 (bf16/fp16 are unaffected: 64 fp32 ulps are
    # 1/1024 and 1/128 of their ulp).
    check_forward_backward(lambda x, t: cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction),
                           _torch_ce(smoothing, reduction),
                           lambda x, t: cross_entropy_ref(x, t, label_smoothing=smoothing, reduction=reduction),
                           [logits, target], textbook_fn=textbook_cross_entropy(-100, smoothing, reduction),
                           cap_fp32_ulps=64)


def test_textbook_cross_entropy_by_hand():
    """Logits (0, log 3) against class 1: p = (1/4, 3/4), lse = log 4."""
    x = torch.tensor([[0.0, math.log(3.0)], [5.0, 5.0]], dtype=torch.float64)
    t = torch.tensor([1, -100])
    assert textbook_cross_entropy()(x, t).item() == pytest.approx(math.log(4.0 / 3.0), rel=1e-15)
    # e = 0.2: 0.8 * log(4/3) + 0.2 * (log 4 - log(3) / 2)
    want = 0.8 * math.log(4.0 / 3.0) + 0.2 * (math.log(4.0) - math.log(3.0) / 2)
    assert textbook_cross_entropy(smoothing=0.2, reduction="sum")(x, t).item() == pytest.approx(want, rel=1e-15)
    assert textbook_cross_entropy(reduction="none")(x, t).tolist()[1] == 0.0


@pytest.mark.parametrize("rows,vocab", [(1, 1), (1, 2), (4, 3), (5, 257)], ids=str)
@pytest.mark.parametrize("smoothing,reduction", [(0.0, "mean"), (0.3, "sum"), (0.1, "none")])
def test_reference_on_small_awkward_shapes(rows, vocab, smoothing, reduction):
    """A vocabulary of one (loss 0, gradient 0) or two; ignored rows; every logit offset by 300 (the loss
    is shift-invariant; exp without the max subtracted would reach 1e130)."""
    logits, target = _inputs(rows, vocab, torch.float64, ignore=True, seed=5)
    logits = logits + 300.0
    check_reference(lambda x, t: cross_entropy_ref(x, t, label_smoothing=smoothing, reduction=reduction),
                    textbook_cross_entropy(-100, smoothing, reduction), [logits, target])
    textbook = textbook_cross_entropy(-100, smoothing, reduction)
    flat_shape = (-1,) if reduction == "none" else ()  # the reference returns "none" rows flattened
    check_reference(lambda x, t: cross_entropy_ref(x, t, label_smoothing=smoothing, reduction=reduction),
                    lambda x, t: textbook(x, t).reshape(flat_shape),
                    [logits.view(1, rows, vocab), target.view(1, rows)])


@pytest.mark.parametrize("vocab_start,width", [(0, 7), (7, 7), (3, 1), (13, 1)], ids=str)
def test_shard_references_against_the_textbook(vocab_start, width):
    """shard_stats_ref: per row (max, sum exp(x - max), the target's logit if it lies in the shard else 0,
    sum x) over the shard; shard_grad_ref: the textbook gradient on the shard's columns. Targets inside and
    outside the shard, and ignored; a one-column shard."""
    vocab, smoothing = 14, 0.1
    logits, _ = _inputs(6, vocab, torch.float64, seed=6)
    target = torch.tensor([0, 3, 7, 13, -100, 10])
    shard = logits[:, vocab_start:vocab_start + width]
    stats = shard_stats_ref(shard, target, vocab_start, -100)
    local = target - vocab_start
    inside = (target != -100) & (local >= 0) & (local < width)
    want = torch.stack([shard.max(-1).values, torch.exp(shard - shard.max(-1, keepdim=True).values).sum(-1),
                        torch.tensor([shard[i, local[i]].item() if inside[i] else 0.0 for i in range(6)],
                                     dtype=torch.float64), shard.sum(-1)], 1)
    assert_textbook_close("stats", stats, want)
    _, lse, _ = _textbook_rows(logits, target, -100, smoothing)
    grad = shard_grad_ref(shard, target, lse, vocab_start, vocab, -100, smoothing)
    columns = slice(vocab_start, vocab_start + width)
    assert_textbook_close("grad", grad, textbook_grad(logits, target, -100, smoothing)[:, columns])
    full = torch.func.grad(lambda x: _textbook_rows(x, target, -100, smoothing)[0].sum())(logits)
    assert_textbook_close("grad vs autograd of the textbook loss", grad, full[:, columns])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_grad_in_logits_matches_and_batched_shapes(dtype):
    logits, target = _inputs(8, 300, dtype, ignore=True)
    logits, target = logits.view(2, 4, 300), target.view(2, 4)
    want_leaf = logits.clone().requires_grad_()
    want = cross_entropy(want_leaf, target, label_smoothing=0.1)
    want.backward()
    got_leaf = logits.clone().requires_grad_()
    got = cross_entropy(got_leaf * 1.0, target, label_smoothing=0.1, grad_in_logits=True)  # non-leaf, as in a model
    got.backward()
    assert torch.equal(got, want)
    assert torch.equal(got_leaf.grad, want_leaf.grad)


def test_grad_in_logits_refuses_logits_saved_elsewhere():
    logits, target = _inputs(4, 64, torch.float32)
    leaf = logits.clone().requires_grad_()
    hidden = leaf * 1.0
    other_use = (hidden * hidden).sum()  # saves `hidden` for its backward
    loss = cross_entropy(hidden, target, grad_in_logits=True) + other_use
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_all_ignored_mean_is_nan_like_torch():
    logits, target = _inputs(3, 20, torch.float32)
    target[:] = -100
    assert torch.isnan(cross_entropy(logits, target)) and torch.isnan(F.cross_entropy(logits, target))


def _split(logits, shards):
    bounds = torch.linspace(0, logits.shape[-1], shards + 1).long().tolist()
    return [(start, logits[:, start:end]) for start, end in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("smoothing,ignore", [(0.0, False), (0.1, True)])
def test_vocab_parallel_two_shards_combined_by_hand(dtype, smoothing, ignore):
    logits, target = _inputs(5, 900, dtype, ignore)
    vocab = logits.shape[-1]

    def sharded(x, t):
        shards = _split(x, 2)
        stats = [shard_stats(s, t, start, -100) for start, s in shards]
        loss_rows, lse = merge_stats(stats, t, -100, smoothing, vocab)
        grads = [shard_grad(s.detach(), t, lse, start, vocab, -100, smoothing) for start, s in shards]
        # grads of a mean loss: each row's gradient / number of valid rows
        n_valid = (t != -100).sum()
        return loss_rows.sum() / n_valid, torch.cat(grads, 1).float() / n_valid

    def reference(x, t):
        x = x.detach().requires_grad_()
        loss = cross_entropy_ref(x, t, label_smoothing=smoothing)
        loss.backward()
        return loss, x.grad

    def torch_own(x, t):
        x = x.detach().requires_grad_()
        loss = _torch_ce(smoothing, "mean")(x, t)
        loss.backward()
        return loss, x.grad

    def textbook(x, t):
        x = x.detach()
        return textbook_cross_entropy(-100, smoothing)(x, t), textbook_grad(x, t, -100, smoothing) / (t != -100).sum()

    check_forward_backward(sharded, torch_own, reference, [logits, target], textbook_fn=textbook)


def test_vocab_parallel_function_single_rank_is_full_cross_entropy():
    """Without a process group the parallel entry point holds the whole vocabulary."""
    logits, target = _inputs(4, 333, torch.float32, ignore=True)
    check_forward_backward(lambda x, t: vocab_parallel_cross_entropy(x, t, 0, 333, label_smoothing=0.1),
                           _torch_ce(0.1, "mean"),
                           lambda x, t: cross_entropy_ref(x, t, label_smoothing=0.1), [logits, target],
                           textbook_fn=textbook_cross_entropy(-100, 0.1))

"""cross_entropy and its vocab-parallel form (Triton) against fp64 and torch's own cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import DEVICE, check_forward_backward, force_triton  # noqa: F401 (autouse fixture)

from kernels.cross_entropy import cross_entropy, cross_entropy_ref
from kernels.cross_entropy_parallel import merge_stats, shard_grad, shard_stats, vocab_parallel_cross_entropy

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


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("smoothing,reduction,ignore", [(0.0, "mean", False), (0.1, "mean", True),
                                                        (0.0, "sum", True), (0.1, "none", False)])
def test_cross_entropy(dtype, shape, smoothing, reduction, ignore):
    logits, target = _inputs(*shape, dtype, ignore)
    check_forward_backward(lambda x, t: cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction),
                           _torch_ce(smoothing, reduction),
                           lambda x, t: cross_entropy_ref(x, t, label_smoothing=smoothing, reduction=reduction),
                           [logits, target])


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

    check_forward_backward(sharded, torch_own, reference, [logits, target])


def test_vocab_parallel_function_single_rank_is_full_cross_entropy():
    """Without a process group the parallel entry point holds the whole vocabulary."""
    logits, target = _inputs(4, 333, torch.float32, ignore=True)
    check_forward_backward(lambda x, t: vocab_parallel_cross_entropy(x, t, 0, 333, label_smoothing=0.1),
                           _torch_ce(0.1, "mean"),
                           lambda x, t: cross_entropy_ref(x, t, label_smoothing=0.1), [logits, target])

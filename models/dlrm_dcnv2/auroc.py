"""Exact binary AUROC over every validation score (no binning, no sampling), ties counted as half.

The ROC curve has one point per distinct score: sorting by score, descending, the cumulative positive
(TP) and negative (FP) counts at the last element of each run of equal scores. The area under it by
trapezoids is sum_i (FP_i - FP_{i-1}) (TP_i + TP_{i-1}) / (2 P N), which credits a tied
(positive, negative) pair with 1/2: the same value as scikit-learn's roc_auc_score and torchmetrics'
BinaryAUROC (the reference's metric) without thresholds. The sum is accumulated in int64, so it is exact:
it is at most 2 P N <= n^2 / 2, about 4e15 for the 89M validation samples.

Two ways to the sorted order, same result:
  - `_auroc_torch`: torch.sort with indices, on the scores' device (the GPU path).
  - `_auroc_packed`: on CPU, each score's order-preserving 32-bit pattern and its label packed into one
    int64 key; numpy sorts the keys alone (no int64 index array, no gather). Same speed as the torch path
    on 2 cores (20.4 s vs 21.4 s for 89,137,319 scores; scikit-learn 46.4 s: perf_tests/results/dlrm_cpu.md),
    with less memory.

Non-finite scores (NaN, +-inf) have no place in a ranking: they come from a diverged model, and sorting them
anyway gave a finite AUROC that depended on where they sat. `binary_auroc` returns NaN for them (scikit-learn
raises), which the run loop ends as aborted ("non-finite eval"), never logs as a result.
"""

from __future__ import annotations

import numpy as np
import torch


def _area(tp: torch.Tensor | np.ndarray, fp, xp) -> float:
    """Area from cumulative counts at the end of each run of equal scores (descending score order)."""
    if xp is np:
        tp_prev = np.concatenate([[0], tp[:-1]])
        fp_prev = np.concatenate([[0], fp[:-1]])
        twice = int(np.sum((fp - fp_prev) * (tp + tp_prev), dtype=np.int64))
    else:
        zero = tp.new_zeros(1)
        tp_prev = torch.cat([zero, tp[:-1]])
        fp_prev = torch.cat([zero, fp[:-1]])
        twice = int(torch.sum((fp - fp_prev) * (tp + tp_prev)))
    positives, negatives = int(tp[-1]), int(fp[-1])
    if positives == 0 or negatives == 0:
        return float("nan")  # undefined with one class only (scikit-learn raises, torchmetrics warns)
    return twice / (2 * positives * negatives)


def _auroc_torch(scores: torch.Tensor, labels: torch.Tensor) -> float:
    sorted_scores, order = torch.sort(scores, descending=True)
    positive = labels[order].to(torch.int64)
    run_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    run_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    ends = torch.nonzero(run_end).squeeze(1)
    tp = torch.cumsum(positive, 0)[ends]
    fp = ends + 1 - tp
    return _area(tp, fp, torch)


def _ordered_bits(scores: np.ndarray) -> np.ndarray:
    """float32 -> uint32 whose unsigned order is the float order (negative floats have all bits flipped)."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def _auroc_packed(scores: np.ndarray, labels: np.ndarray) -> float:
    keys = _ordered_bits(scores).astype(np.int64) << 1
    keys |= labels.astype(np.int64) & 1
    keys.sort()  # ascending score; within a score, negatives first (irrelevant: runs are taken whole)
    keys = keys[::-1]
    score = keys >> 1
    run_end = np.ones(len(keys), dtype=bool)
    run_end[:-1] = score[1:] != score[:-1]
    ends = np.flatnonzero(run_end)
    tp = np.cumsum(keys & 1)[ends]
    fp = ends + 1 - tp
    return _area(tp, fp, np)


def binary_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of `scores` (float, any shape) against 0/1 `labels`; NaN if only one class is present or if any
    score is not finite (a diverged model)."""
    scores, labels = scores.detach().flatten(), labels.detach().flatten()
    if scores.numel() != labels.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    if scores.numel() == 0 or not bool(torch.isfinite(scores).all()):
        return float("nan")
    if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return _auroc_packed(scores.float().numpy(), labels.numpy())
    return _auroc_torch(scores, labels)

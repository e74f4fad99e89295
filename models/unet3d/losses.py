"""The reference's loss and score (model/losses.py), for NCDHW logits and (N, 1, D, H, W) integer labels.

Loss: (Dice loss + cross-entropy) / 2. The Dice is per sample and per class on the softmax probabilities
against one-hot targets, background excluded, (2 * intersection + 1e-6) / (target + prediction + 1e-6);
the Dice loss is the mean of (1 - Dice) over samples and classes, the cross-entropy the mean over voxels.

Score: the same Dice on the argmax's one-hot (a class absent from both gives 1), per class; a volume's
score is the mean over kidney and tumour. Counted in integers here, so any volume size is exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMOOTH_NUMERATOR = SMOOTH_DENOMINATOR = 1e-6


def one_hot(label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, 1, D, H, W) integers -> (N, C, D, H, W) float32."""
    return F.one_hot(label[:, 0].long(), num_classes).permute(0, 4, 1, 2, 3).float()


def soft_dice(probabilities: torch.Tensor, target_one_hot: torch.Tensor) -> torch.Tensor:
    """(N, C) Dice per sample and class, background (class 0) excluded."""
    p, t = probabilities[:, 1:], target_one_hot[:, 1:]
    spatial = tuple(range(2, p.ndim))
    intersection = (p * t).sum(spatial)
    return (2.0 * intersection + SMOOTH_NUMERATOR) / (t.sum(spatial) + p.sum(spatial) + SMOOTH_DENOMINATOR)


def dice_ce_loss(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Scalar float32 loss of a batch (logits are upcast: softmax and sums over 2M voxels need fp32)."""
    logits = logits.float()
    cross_entropy = F.cross_entropy(logits, label[:, 0].long())
    dice = soft_dice(torch.softmax(logits, dim=1), one_hot(label, logits.shape[1]))
    return ((1.0 - dice).mean() + cross_entropy) / 2


def argmax_dice(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """(C - 1,) float64 Dice per foreground class of one volume's prediction (logits (1, C, ...))."""
    prediction = logits.argmax(dim=1)
    target = label[:, 0].long()
    scores = []
    for cls in range(1, logits.shape[1]):
        p, t = prediction == cls, target == cls
        intersection = (p & t).sum(dtype=torch.int64).double()
        total = (p.sum(dtype=torch.int64) + t.sum(dtype=torch.int64)).double()
        scores.append((2.0 * intersection + SMOOTH_NUMERATOR) / (total + SMOOTH_DENOMINATOR))
    return torch.stack(scores)

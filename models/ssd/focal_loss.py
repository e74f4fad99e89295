"""Sigmoid focal loss (Lin et al.): torchvision.ops.sigmoid_focal_loss's arithmetic unreduced, and RetinaNet's
classification loss over a batch through ours or apex's fused kernel.

    retinanet_focal_loss(...)   per image, the focal loss summed over its non-ignored anchors and divided by its
                                foreground count; the mean over images (torchvision's and the reference's loss)

MLPERF_KERNELS=apex (kernels/backends.py) sends the batch loss to apex.contrib.focal_loss.focal_loss, NVIDIA's
fused kernel (an error when apex is not usable), given what its API needs: class indices as int64 with -1
background and -2 ignored, logits in fp16 or fp32 (bf16 is cast up: the kernel has no bf16), classes padded with
zero columns to a multiple of 16 bytes (the kernel's vector width; it skips the padding), one call per image
with num_positive_sum = that image's foreground count x B, since the kernel divides its whole sum by one number
and the loss divides per image. Fewer real classes than the vector width (the 2-class debug flavour in fp32
needs 4) stay on ours.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import backends

APEX_BACKGROUND, APEX_IGNORED = -1, -2  # apex's target codes (its kernel skips rows marked -2)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def retinanet_focal_loss(cls_BNK: torch.Tensor, labels_BN: torch.Tensor, foreground_BN: torch.Tensor,
                         ignored_BN: torch.Tensor, num_foreground_B: torch.Tensor, alpha: float = 0.25,
                         gamma: float = 2.0) -> torch.Tensor:
    """cls_BNK: logits; labels_BN: each anchor's matched class (read only where foreground_BN); ignored_BN:
    anchors between the IoU thresholds; num_foreground_B: float32 foreground counts, at least 1."""
    if backends.apex_wanted():
        apex_focal_loss = backends.apex_op("focal_loss")  # a clear error when apex is not usable
        logits_BNK = cls_BNK if cls_BNK.dtype in (torch.float16, torch.float32) else cls_BNK.float()
        vector = 16 // logits_BNK.element_size()
        if cls_BNK.shape[-1] >= vector:
            return _apex_loss(apex_focal_loss, logits_BNK, vector, labels_BN, foreground_BN, ignored_BN,
                              num_foreground_B, alpha, gamma)
    target_BNK = F.one_hot(labels_BN.clamp(min=0), cls_BNK.shape[-1]).to(torch.float32)
    target_BNK = target_BNK * foreground_BN[..., None]
    focal_BNK = sigmoid_focal_loss(cls_BNK.float(), target_BNK, alpha, gamma)
    focal_B = torch.where(~ignored_BN[..., None], focal_BNK, 0.0).sum((1, 2))
    return (focal_B / num_foreground_B).mean()


def _apex_loss(apex_focal_loss, logits_BNK, vector, labels_BN, foreground_BN, ignored_BN, num_foreground_B,
               alpha, gamma):
    num_classes = logits_BNK.shape[-1]
    padded_BNK = F.pad(logits_BNK, (0, -num_classes % vector)).contiguous()
    targets_BN = torch.where(foreground_BN, labels_BN, APEX_BACKGROUND)
    targets_BN = torch.where(ignored_BN, APEX_IGNORED, targets_BN).to(torch.int64).contiguous()
    batch = padded_BNK.shape[0]
    divisors_B = (num_foreground_B.to(torch.float32) * batch).contiguous()
    return sum(apex_focal_loss(padded_BNK[b], targets_BN[b], divisors_B[b:b + 1], num_classes, alpha, gamma, 0.0)
               for b in range(batch))

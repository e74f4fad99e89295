"""RetinaNet's training loss over a batch, vectorised (no per-image loop): per image, the focal loss over
all non-ignored anchors plus the L1 loss of the box-coder deltas over foreground anchors, each divided by
the image's foreground count (at least 1); then the mean over images, as torchvision and the reference.

Shapes: B images, N anchors, K classes, G ground-truth boxes per image after padding (label -1).
"""

from __future__ import annotations

import torch

from models.ssd import box_coder
from models.ssd.focal_loss import retinanet_focal_loss
from models.ssd.matching import IGNORE, match


def retinanet_loss(cls_BNK: torch.Tensor, box_BN4: torch.Tensor, anchors_N4: torch.Tensor,
                   gt_boxes_BG4: torch.Tensor, gt_labels_BG: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(classification, box regression) losses, each averaged over the batch."""
    valid_BG = gt_labels_BG >= 0
    matches_BN = match(gt_boxes_BG4, valid_BG, anchors_N4)
    foreground_BN = matches_BN >= 0
    num_foreground_B = foreground_BN.sum(1).clamp(min=1).to(torch.float32)
    index_BN = matches_BN.clamp(min=0)

    labels_BN = torch.gather(gt_labels_BG, 1, index_BN) if gt_labels_BG.shape[1] else torch.zeros_like(index_BN)
    focal = retinanet_focal_loss(cls_BNK, labels_BN, foreground_BN, matches_BN == IGNORE, num_foreground_B)

    if gt_boxes_BG4.shape[1]:
        matched_BN4 = torch.gather(gt_boxes_BG4, 1, index_BN[..., None].expand(-1, -1, 4))
    else:
        matched_BN4 = anchors_N4.expand(box_BN4.shape[0], -1, -1)
    # background anchors may point at padding: encode against a harmless box, then mask
    matched_BN4 = torch.where(foreground_BN[..., None], matched_BN4, anchors_N4.expand_as(matched_BN4))
    target_BN4 = box_coder.encode(matched_BN4.float(), anchors_N4.float())
    l1_BN4 = (box_BN4.float() - target_BN4).abs()
    box_B = torch.where(foreground_BN[..., None], l1_BN4, 0.0).sum((1, 2))
    return focal, (box_B / num_foreground_B).mean()

"""Anchor-to-box matching as torchvision's Matcher(0.5, 0.4, allow_low_quality_matches=True), for a whole
batch at once: ground truth is padded to G boxes per image (label -1 marks padding).

Result per anchor: the index of its matched box (>= 0), BACKGROUND (IoU < 0.4) or IGNORE (in between).
Low-quality matches: every anchor that is some box's best anchor (ties included) takes its own best box,
even below 0.4, exactly as torchvision's set_low_quality_matches_ does.
"""

from __future__ import annotations

import torch

BACKGROUND, IGNORE = -1, -2
FG_IOU, BG_IOU = 0.5, 0.4


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """[B, G, 4] x [N, 4] -> [B, G, N] IoU (torchvision.ops.box_iou's arithmetic)."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[:, 2] - boxes2[:, 0]) * (boxes2[:, 3] - boxes2[:, 1])
    lt = torch.max(boxes1[..., :, None, :2], boxes2[None, :, :2])
    rb = torch.min(boxes1[..., :, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[None, :] - inter)


def match(gt_boxes: torch.Tensor, gt_valid: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """gt_boxes [B, G, 4], gt_valid [B, G] bool, anchors [N, 4] -> matches [B, N] (int64)."""
    b, n = gt_boxes.shape[0], anchors.shape[0]
    if gt_boxes.shape[1] == 0:
        return torch.full((b, n), BACKGROUND, dtype=torch.int64, device=anchors.device)
    iou = box_iou(gt_boxes.float(), anchors.float())
    iou = torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))  # padding never wins
    best_iou, all_matches = iou.max(dim=1)  # [B, N]
    matches = all_matches.clone()
    matches[best_iou < BG_IOU] = BACKGROUND
    matches[(best_iou >= BG_IOU) & (best_iou < FG_IOU)] = IGNORE
    best_per_gt = iou.max(dim=2).values  # [B, G]
    is_best = (iou == best_per_gt[..., None]) & gt_valid[..., None]
    low_quality = is_best.any(dim=1)  # [B, N]
    matches = torch.where(low_quality, all_matches, matches)
    # an image without boxes matches nothing (torchvision: all background)
    return torch.where(gt_valid.any(dim=1, keepdim=True), matches, torch.full_like(matches, BACKGROUND))

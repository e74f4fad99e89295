"""Detections from RetinaNet's outputs, torchvision's postprocess vectorised over the batch: per level,
scores above the threshold, the top candidates, decoded and clipped to the input; then one batched NMS over
all images (boxes offset per image and class), the best `detections_per_image` per image, and boxes scaled
back from the S x S input to each image's original size."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from models.ssd import box_coder
from models.ssd.model import SSDModelConfig


@torch.no_grad()
def detect(cls_BNK: torch.Tensor, box_BN4: torch.Tensor, anchors_N4: torch.Tensor,
           feature_sizes: list[tuple[int, int]], original_sizes_B2: torch.Tensor,
           cfg: SSDModelConfig) -> list[dict[str, torch.Tensor]]:
    """original_sizes_B2: (height, width) per image. Returns per image boxes [D, 4] xyxy in original
    pixels, scores [D], labels [D] (0-based class indices)."""
    b, _, k = cls_BNK.shape
    boxes, scores, labels, images = [], [], [], []
    start = 0
    for h, w in feature_sizes:
        count = h * w * 9
        logits = cls_BNK[:, start:start + count].float().reshape(b, -1)
        level_scores = torch.sigmoid(logits)
        level_scores = torch.where(level_scores > cfg.score_threshold, level_scores, -1.0)
        top, index = level_scores.topk(min(cfg.topk_candidates, level_scores.shape[1]), dim=1)
        anchor_index = index // k
        deltas = torch.gather(box_BN4[:, start:start + count].float(), 1, anchor_index[..., None].expand(-1, -1, 4))
        decoded = box_coder.decode(deltas, anchors_N4[start:start + count][anchor_index])
        decoded = decoded.clamp(min=0, max=cfg.image_size)  # clip_boxes_to_image on the S x S input
        keep = top > cfg.score_threshold
        boxes.append(decoded[keep])
        scores.append(top[keep])
        labels.append((index % k)[keep])
        images.append(torch.arange(b, device=top.device)[:, None].expand_as(top)[keep])
        start += count
    boxes, scores, labels, images = (torch.cat(x) for x in (boxes, scores, labels, images))
    keep = batched_nms(boxes, scores, images * k + labels, cfg.nms_threshold)  # sorted by decreasing score
    keep = keep[torch.sort(images[keep], stable=True).indices]  # grouped by image, still by score within
    image_of = images[keep]
    counts = torch.bincount(image_of, minlength=b).tolist()
    scale = torch.stack((original_sizes_B2[:, 1], original_sizes_B2[:, 0]) * 2, dim=1).float() / cfg.image_size
    out = []
    for i, part in enumerate(torch.split(keep, counts)):
        part = part[: cfg.detections_per_image]
        out.append({"boxes": boxes[part] * scale[i].to(boxes.device), "scores": scores[part],
                    "labels": labels[part]})
    return out

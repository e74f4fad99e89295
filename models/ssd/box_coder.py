"""torchvision's BoxCoder with weights (1, 1, 1, 1): xyxy boxes <-> (dx, dy, dw, dh) relative to anchors,
on any leading shape ([..., 4])."""

from __future__ import annotations

import math

import torch

BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def _centre_size(boxes: torch.Tensor):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(gt: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    ax, ay, aw, ah = _centre_size(anchors)
    gx, gy, gw, gh = _centre_size(gt)
    return torch.stack(((gx - ax) / aw, (gy - ay) / ah, torch.log(gw / aw), torch.log(gh / ah)), dim=-1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    deltas = deltas.float()
    ax, ay, aw, ah = _centre_size(anchors)
    dw = deltas[..., 2].clamp(max=BBOX_XFORM_CLIP)
    dh = deltas[..., 3].clamp(max=BBOX_XFORM_CLIP)
    cx, cy = deltas[..., 0] * aw + ax, deltas[..., 1] * ah + ay
    w, h = torch.exp(dw) * aw, torch.exp(dh) * ah
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)

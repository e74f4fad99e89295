"""Anchors as torchvision's AnchorGenerator makes them for RetinaNet: per level, base size x scales
{1, 2^(1/3), 2^(2/3)} (truncated to int) x aspect ratios {0.5, 1, 2}, 9 per location, ordered location
major (row-major over the level's grid) and anchor minor; levels concatenated P3..P7."""

from __future__ import annotations

import torch

ASPECT_RATIOS = (0.5, 1.0, 2.0)


def level_sizes(base: int) -> tuple[int, int, int]:
    return base, int(base * 2 ** (1.0 / 3)), int(base * 2 ** (2.0 / 3))


def cell_anchors(sizes: tuple[int, ...]) -> torch.Tensor:
    """[9, 4] anchors centred on 0 (aspect ratio major, scale minor), rounded as torchvision does."""
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(ASPECT_RATIOS, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def generate_anchors(image_size: int, feature_sizes: list[tuple[int, int]], base_sizes: tuple[int, ...],
                     device: torch.device | None = None) -> torch.Tensor:
    """[N, 4] xyxy anchors for an image_size x image_size input with the given feature map sizes."""
    out = []
    for (h, w), base in zip(feature_sizes, base_sizes, strict=True):
        stride_y, stride_x = image_size // h, image_size // w
        shift_x = torch.arange(0, w, dtype=torch.int32).float() * stride_x
        shift_y = torch.arange(0, h, dtype=torch.int32).float() * stride_y
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack((xx, yy, xx, yy), dim=1)
        out.append((shifts.view(-1, 1, 4) + cell_anchors(level_sizes(base)).view(1, -1, 4)).reshape(-1, 4))
    return torch.cat(out).to(device)

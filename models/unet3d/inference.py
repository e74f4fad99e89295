"""Sliding-window inference over a whole volume, blended with a Gaussian importance map.

Windows of the ROI size step by int(ROI * (1 - overlap)) along each axis and the last window of an axis
is pushed back to end flush with the volume, so every voxel is predicted (MONAI's `dense_patch_slices`);
an axis shorter than the ROI is first padded, centred, with `padding_value` (-2.2: below any normalised
CT value). Each voxel's logits are the importance-weighted mean of the windows that cover it. The map is
MONAI's `compute_importance_map(mode="gaussian")`: the product of three sampled Gaussians centred on the
window, sigma = sigma_scale * ROI, floored at max(min, 1e-3). Windows go through the model in batches
of `window_batch`; the result equals MONAI's `sliding_window_inference` (tests/models/test_unet3d_eval.py).

Against the reference (runtime/inference.py): the reference trims up to stride/2 - 1 voxels off each
end of an axis (from the image and the label, so they are never scored) and pads the rest to a whole
number of strides; here nothing is trimmed, which is at least as thorough. Its map is the cube root of
a product of three Gaussians of sigma 0.125 * ROI, i.e. one Gaussian of sigma 0.125 * sqrt(3) * ROI
without the 1e-3 floor; `sigma_scale=0.2165` gives that map here up to the floor.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

IMPORTANCE_FLOOR = 1e-3


def gaussian_importance_map(roi: tuple[int, ...], sigma_scale: float, device=None) -> torch.Tensor:
    """float32 map of shape `roi` (MONAI's, see the module docstring)."""
    weights = None
    for i, n in enumerate(roi):
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        x = torch.exp(x ** 2 / (-2 * (n * sigma_scale) ** 2))
        weights = x if i == 0 else weights.unsqueeze(-1) * x[(None,) * i]
    floor = max(weights.min().item(), IMPORTANCE_FLOOR)
    return weights.clamp_(min=floor)


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Starts of the windows along one axis of `size` (>= roi) voxels."""
    interval = roi if size == roi else max(int(roi * (1 - overlap)), 1)
    starts = []
    for index in range(-(-size // interval)):
        start = index * interval
        starts.append(start - max(start + roi - size, 0))
        if start + roi >= size:
            break
    return starts


def sliding_window_inference(model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                             roi: tuple[int, ...], *, overlap: float, sigma_scale: float, padding_value: float,
                             window_batch: int = 1) -> torch.Tensor:
    """float32 logits (1, C, D, H, W) of `image` (1, 1, D, H, W)."""
    if image.ndim != 5 or image.shape[0] != 1:
        raise ValueError(f"sliding_window_inference takes one volume (1, 1, D, H, W), got {tuple(image.shape)}")
    size = image.shape[2:]
    pad = []
    for axis in reversed(range(3)):  # F.pad lists the last axis first
        missing = max(roi[axis] - size[axis], 0)
        pad += [missing // 2, missing - missing // 2]
    if any(pad):
        image = F.pad(image, pad, mode="constant", value=padding_value)
    padded = image.shape[2:]
    starts = [(d, h, w) for d in window_starts(padded[0], roi[0], overlap)
              for h in window_starts(padded[1], roi[1], overlap) for w in window_starts(padded[2], roi[2], overlap)]
    weights = gaussian_importance_map(roi, sigma_scale, image.device)
    output = count = None
    for first in range(0, len(starts), window_batch):
        batch = starts[first:first + window_batch]
        windows = torch.cat([image[..., d:d + roi[0], h:h + roi[1], w:w + roi[2]] for d, h, w in batch])
        logits = model(windows).float()
        if output is None:
            output = torch.zeros((1, logits.shape[1], *padded), dtype=torch.float32, device=image.device)
            count = torch.zeros((1, 1, *padded), dtype=torch.float32, device=image.device)
        for (d, h, w), window_logits in zip(batch, logits):
            where = (..., slice(d, d + roi[0]), slice(h, h + roi[1]), slice(w, w + roi[2]))
            output[where] += weights * window_logits
            count[where] += weights
    output /= count
    crop = tuple(slice(pad[2 * (2 - axis)], pad[2 * (2 - axis)] + size[axis]) for axis in range(3))
    return output[(...,) + crop]

"""The reference's train-time augmentation of one preprocessed case, as pure functions of a numpy RNG.

Draws, in this order, per sample (mlcommons/training image_segmentation/pytorch/data_loading/pytorch_loader.py):
  balanced crop  with probability `oversampling` a foreground crop: a class drawn uniformly from the
                 classes > 0 present in the case, one of that class's two largest connected components
                 (by bounding-box volume; 6-connectivity, scipy's default) drawn uniformly, then per
                 axis a window of the patch size around its box (`_around`); otherwise a uniform crop
                 whose start is drawn from [0, size - patch) (the reference's `randrange`, which never
                 draws the last position). A case without foreground falls back to the uniform crop.
  flips          each spatial axis with probability 1/3
  brightness     with probability 0.1, image * (1 + f), f ~ U(0.7, 1.3): a gain of 1.7-2.3, as the
                 reference computes it
  noise          with probability 0.1, + N(0, s), s ~ U(0, 0.1)
Image float32, label uint8, both (1, P, P, P).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FLIP_PROBABILITY = 1 / 3
BRIGHTNESS_PROBABILITY, BRIGHTNESS_FACTOR = 0.1, 0.3
NOISE_PROBABILITY, NOISE_STD = 0.1, 0.1

Box = tuple[tuple[int, int], ...]  # (start, stop) per spatial axis


def foreground_boxes(label: np.ndarray) -> dict[int, list[Box]]:
    """Per class > 0 present in `label` (1, D, H, W): the bounding boxes of its two largest connected
    components, the larger last (the reference's `argsort(volumes)[-2:]`)."""
    import scipy.ndimage

    boxes = {}
    volume = label[0]
    for cls in np.unique(volume[volume > 0]).tolist():
        components, _ = scipy.ndimage.label(volume == cls)
        slices = [s for s in scipy.ndimage.find_objects(components) if s is not None]
        sizes = [int(np.prod([s.stop - s.start for s in sl])) for sl in slices]
        largest = np.argsort(sizes, kind="stable")[-2:]
        boxes[int(cls)] = [tuple((s.start, s.stop) for s in slices[i]) for i in largest]
    return boxes


def _randrange(rng: np.random.Generator, n: int) -> int:
    return 0 if n == 0 else int(rng.integers(n))


def _around(rng: np.random.Generator, start: int, stop: int, patch: int, size: int) -> int:
    """The reference's `adjust`: a window of `patch` voxels holding [start, stop) (or inside it when the
    box is larger), placed at random, pushed back inside [0, size). Returns the window's start."""
    diff = patch - (stop - start)
    sign = -1 if diff < 0 else 1
    diff = abs(diff)
    low_adjust = _randrange(rng, diff)
    low = max(0, start - sign * low_adjust)
    high = min(size, stop + sign * (diff - low_adjust))
    short = patch - (high - low)
    if short > 0 and low == 0:
        high += short
    elif short > 0:
        low -= short
    return low


def crop_start(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...],
               boxes: dict[int, list[Box]], oversampling: float) -> tuple[tuple[int, ...], bool]:
    """(window start per axis, whether it is a foreground crop) for a case of spatial `shape`."""
    if rng.random() < oversampling and boxes:
        classes = sorted(boxes)
        cls = classes[int(rng.integers(len(classes)))]
        box = boxes[cls][int(rng.integers(len(boxes[cls])))]
        return tuple(_around(rng, lo, hi, p, s) for (lo, hi), p, s in zip(box, patch, shape)), True
    return tuple(_randrange(rng, s - p) for s, p in zip(shape, patch)), False


@dataclass
class Augmentation:
    """What `augment` drew for one sample (the statistical tests read it)."""

    start: tuple[int, ...]
    foreground: bool
    flips: tuple[bool, bool, bool]
    brightness: float | None  # the gain applied, or None
    noise_std: float | None


def augment(rng: np.random.Generator, image: np.ndarray, label: np.ndarray, boxes: dict[int, list[Box]], *,
            patch: tuple[int, ...], oversampling: float) -> tuple[np.ndarray, np.ndarray, Augmentation]:
    shape = image.shape[1:]
    start, foreground = crop_start(rng, shape, patch, boxes, oversampling)
    window = (slice(None),) + tuple(slice(s, s + p) for s, p in zip(start, patch))
    image, label = np.asarray(image[window]), np.asarray(label[window])
    flips = tuple(bool(rng.random() < FLIP_PROBABILITY) for _ in range(3))
    axes = tuple(axis + 1 for axis, flip in enumerate(flips) if flip)
    if axes:
        image, label = np.flip(image, axes), np.flip(label, axes)
    image = np.ascontiguousarray(image, dtype=np.float32)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    gain = None
    if rng.random() < BRIGHTNESS_PROBABILITY:
        gain = 1.0 + rng.uniform(1.0 - BRIGHTNESS_FACTOR, 1.0 + BRIGHTNESS_FACTOR)
        image = (image * np.float32(gain)).astype(np.float32)
    std = None
    if rng.random() < NOISE_PROBABILITY:
        std = float(rng.uniform(0.0, NOISE_STD))
        image = image + rng.normal(0.0, std, size=image.shape).astype(np.float32)
    return image, label, Augmentation(start, foreground, flips, gain, std)

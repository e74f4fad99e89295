"""A small, learnable ImageNet written in exactly the reference TFRecord layout.

Each class is a hue (evenly spaced round the colour wheel) times a stripe orientation (horizontal or
vertical). Both survive what the train pipeline does: a crop down to 5% of the area still shows one
or more stripe periods because the period scales with the image, a horizontal flip leaves the
orientation unchanged, and a resize to 56x56 keeps both the colour and the orientation. Per-image
hue and brightness jitter, random stripe period and phase, and pixel noise keep it from being a
lookup table. A small ResNet reaches >= 0.9 top-1 in a few epochs (tests/pipelines, slow marker).

    python -m pipelines.imagenet.synthetic --out /data/imagenet_synthetic
"""

from __future__ import annotations

import argparse
import colorsys
import io
import math
import os

import numpy as np
from PIL import Image

from pipelines.imagenet.format import NUM_CLASSES, encode_image_example, shard_name
from pipelines.tfrecord import TFRecordWriter

_SPLIT_CODES = {"train": 0, "validation": 1}  # part of each image's seed, so splits never repeat
JPEG_QUALITY = 90


def render_image(rng: np.random.Generator, label: int, num_classes: int, height: int,
                 width: int) -> np.ndarray:
    """uint8 [height, width, 3] image of 0-based class `label`."""
    hue_index, vertical = divmod(label, 2)
    num_hues = math.ceil(num_classes / 2)
    hue = (hue_index / num_hues + rng.normal(0.0, 0.01)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.7, 0.75)) * 255.0 * rng.uniform(0.8, 1.2)
    side = width if vertical else height
    period = side * rng.uniform(0.1, 0.2)
    coordinate = np.arange(side, dtype=np.float64)
    wave = 80.0 * np.sin(2 * np.pi * coordinate / period + rng.uniform(0, 2 * np.pi))
    stripes = wave[None, :] if vertical else wave[:, None]
    pixels = (colour[None, None, :] + stripes[:, :, None]
              + rng.normal(0.0, 8.0, size=(height, width, 3)))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _random_bboxes(rng: np.random.Generator) -> np.ndarray:
    """Half the records get one or two boxes (ymin, xmin, ymax, xmax); the rest none, as in the
    reference data where most validation and many train images carry no box."""
    if rng.random() < 0.5:
        return np.zeros((0, 4), dtype=np.float32)
    count = int(rng.integers(1, 3))
    low = rng.uniform(0.0, 0.5, size=(count, 2))
    high = low + rng.uniform(0.2, 1.0, size=(count, 2)) * (1.0 - low)
    return np.concatenate([low, high], axis=1).astype(np.float32)


def _encode_record(seed: int, split: str, label: int, number: int, num_classes: int,
                   min_side: int, max_side: int, stored_label: int) -> bytes:
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], label, number])
    height, width = (int(s) for s in rng.integers(min_side, max_side + 1, size=2))
    buffer = io.BytesIO()
    Image.fromarray(render_image(rng, label, num_classes, height, width)).save(
        buffer, format="JPEG", quality=JPEG_QUALITY)
    return encode_image_example(buffer.getvalue(), stored_label + 1, text=f"synthetic class {stored_label}",
                                bboxes=_random_bboxes(rng))


def _noisy_labels(seed: int, split: str, total: int, num_classes: int, per_class: int,
                  label_noise: float) -> np.ndarray:
    """The label stored for each item: its class, except for exactly round(label_noise * total) items
    that get another class. Like the few percent of mislabelled ImageNet images, these cap top-1 below
    1.0, which the compliance checker requires of an eval (0.759 <= top-1 < 1.0)."""
    labels = np.arange(total) // per_class
    if label_noise > 0 and num_classes > 1:
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], 1])
        flipped = rng.choice(total, size=max(1, round(label_noise * total)), replace=False)
        labels[flipped] = (labels[flipped] + rng.integers(1, num_classes, size=flipped.size)) % num_classes
    return labels


def _write_split(out_dir: str, split: str, *, seed: int, num_classes: int, per_class: int,
                 num_shards: int, min_side: int, max_side: int, label_noise: float = 0.0) -> int:
    total = num_classes * per_class
    if not 1 <= num_shards <= total:
        raise ValueError(f"{split}: {num_shards} shards for {total} records; need 1..{total}")
    if not 0.0 <= label_noise < 1.0:
        raise ValueError(f"{split}: label_noise {label_noise} outside [0, 1)")
    stored = _noisy_labels(seed, split, total, num_classes, per_class, label_noise)
    # Shards hold a shuffled mix of classes, as the reference converter writes them.
    order = np.random.default_rng([seed, _SPLIT_CODES[split]]).permutation(total)
    for shard, chunk in enumerate(np.array_split(order, num_shards)):
        with TFRecordWriter(os.path.join(out_dir, shard_name(split, shard, num_shards))) as writer:
            for item in chunk:
                label, number = divmod(int(item), per_class)
                writer.write(_encode_record(seed, split, label, number, num_classes, min_side, max_side,
                                            int(stored[item])))
    return total


def write_synthetic_imagenet(out_dir: str, *, num_classes: int = 16, train_per_class: int = 96,
                             val_per_class: int = 32, num_train_shards: int = 8,
                             num_val_shards: int = 4, min_side: int = 48, max_side: int = 96,
                             seed: int = 0, val_label_noise: float = 0.0) -> dict[str, int]:
    """Write train and validation shards to `out_dir`; returns the record count of each split.
    `val_label_noise`: the fraction of validation records stored with a wrong label.
    The output is a function of the arguments only (same seed, same bytes)."""
    if not 1 <= num_classes <= NUM_CLASSES:
        raise ValueError(f"num_classes must be in 1..{NUM_CLASSES}, got {num_classes}")
    if not 8 <= min_side <= max_side:
        raise ValueError(f"need 8 <= min_side <= max_side, got {min_side}, {max_side}")
    os.makedirs(out_dir, exist_ok=True)
    common = dict(seed=seed, num_classes=num_classes, min_side=min_side, max_side=max_side)
    return {
        "train": _write_split(out_dir, "train", per_class=train_per_class,
                              num_shards=num_train_shards, **common),
        "validation": _write_split(out_dir, "validation", per_class=val_per_class,
                                   num_shards=num_val_shards, label_noise=val_label_noise, **common),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory for the shards")
    parser.add_argument("--num-classes", type=int, default=16)
    parser.add_argument("--train-per-class", type=int, default=96)
    parser.add_argument("--val-per-class", type=int, default=32)
    parser.add_argument("--num-train-shards", type=int, default=8)
    parser.add_argument("--num-val-shards", type=int, default=4)
    parser.add_argument("--min-side", type=int, default=48)
    parser.add_argument("--max-side", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write_synthetic_imagenet(
        args.out, num_classes=args.num_classes, train_per_class=args.train_per_class,
        val_per_class=args.val_per_class, num_train_shards=args.num_train_shards,
        num_val_shards=args.num_val_shards, min_side=args.min_side, max_side=args.max_side,
        seed=args.seed)
    print(f"wrote {counts['train']} train and {counts['validation']} validation records to {args.out}")


if __name__ == "__main__":
    main()

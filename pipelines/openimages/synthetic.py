"""A small learnable OpenImages stand-in in the real layout: JPEGs of varied sizes, each with 1..N solid
rectangles whose colour is their class, on a noisy grey background; a few training boxes are iscrowd (kept
in training, as the reference keeps them)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines.openimages.format import write_split

PALETTE = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40), (200, 60, 210), (40, 210, 210)]


def _image(rng: np.random.Generator, classes: int, min_side: int, max_side: int, max_objects: int):
    w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    pixels = rng.normal(128, 12, size=(h, w, 3))
    objects = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        bw, bh = int(rng.uniform(0.35, 0.7) * w), int(rng.uniform(0.35, 0.7) * h)
        x, y = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
        c = int(rng.integers(classes))
        pixels[y:y + bh, x:x + bw] = np.asarray(PALETTE[c % len(PALETTE)]) + rng.normal(0, 8, size=(bh, bw, 3))
        objects.append((c, [x, y, bw, bh]))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=92)
    # a later rectangle may cover an earlier one: keep only boxes still mostly visible
    visible = []
    for k, (c, (x, y, bw, bh)) in enumerate(objects):
        covered = np.zeros((bh, bw), dtype=bool)
        for _, (x2, y2, bw2, bh2) in objects[k + 1:]:
            covered[max(y2 - y, 0):max(y2 + bh2 - y, 0), max(x2 - x, 0):max(x2 + bw2 - x, 0)] = True
        if covered.mean() < 0.3:
            visible.append((c, [x, y, bw, bh]))
    return buf.getvalue(), w, h, visible


def write_synthetic_openimages(root: str, *, classes: int, train_images: int, val_images: int, min_side: int,
                               max_side: int, max_objects: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    categories = [{"id": 100 + c, "name": f"synthetic_{c}"} for c in range(classes)]  # ids need not start at 0
    next_image, next_ann = 1, 1
    for split, count in (("train", train_images), ("validation", val_images)):
        images, annotations, jpegs = [], [], {}
        for _ in range(count):
            data, w, h, objects = _image(rng, classes, min_side, max_side, max_objects)
            name = f"{next_image:016x}.jpg"
            images.append({"id": next_image, "file_name": name, "width": w, "height": h})
            jpegs[name] = data
            for c, box in objects:
                crowd = int(split == "train" and rng.random() < 0.05)
                annotations.append({"id": next_ann, "image_id": next_image, "category_id": 100 + c,
                                    "bbox": [float(v) for v in box], "area": float(box[2] * box[3]),
                                    "iscrowd": crowd})
                next_ann += 1
            next_image += 1
        write_split(root, split, {"images": images, "annotations": annotations, "categories": categories}, jpegs)

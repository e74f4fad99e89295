"""The on-disk layout of the MLPerf OpenImages subset, and its reader.

    <root>/{train,validation}/data/<image_id>.jpg
    <root>/{train,validation}/labels/openimages-mlperf.json   (COCO detection: images, annotations with
                                                               xywh pixel boxes, category_id, iscrowd;
                                                               categories)

Reading keeps every image (images without boxes too, as the reference), turns boxes into xyxy clamped to
the image, keeps iscrowd boxes, and maps category ids to contiguous 0-based class indices (sorted ids).
Bad annotations are skipped, counted by reason and reported once (never an error mid-epoch): one naming an
image or a category the file does not declare, and a box with no area left inside its image. An image file
that is missing or does not decode is an OpenImagesFormatError naming it (prepare/verify_dataset.py finds
them all before a run).
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass, field

import numpy as np

LABELS_FILE = "openimages-mlperf.json"
SPLITS = ("train", "validation")


class OpenImagesFormatError(ValueError):
    pass


def labels_path(root: str, split: str) -> str:
    return os.path.join(root, split, "labels", LABELS_FILE)


def image_path(root: str, split: str, file_name: str) -> str:
    return os.path.join(root, split, "data", file_name)


@dataclass
class Split:
    root: str
    split: str
    coco: dict  # the json as read (the COCO evaluator's ground truth)
    image_ids: list[int]
    file_names: list[str]
    sizes: list[tuple[int, int]]  # (height, width) the json declares
    boxes: list[np.ndarray]  # per image [G, 4] float32 xyxy pixels
    labels: list[np.ndarray]  # per image [G] int64 class indices
    category_ids: list[int]  # class index -> COCO category id
    skipped: dict = field(default_factory=dict)  # reason -> count

    def __len__(self) -> int:
        return len(self.image_ids)

    def path(self, i: int) -> str:
        return image_path(self.root, self.split, self.file_names[i])


def read_split(root: str, split: str, log=print) -> Split:
    path = labels_path(root, split)
    try:
        with open(path) as f:
            coco = json.load(f)
    except FileNotFoundError:
        raise OpenImagesFormatError(f"{path}: missing (layout: <root>/{split}/labels/{LABELS_FILE})") from None
    except json.JSONDecodeError as error:
        raise OpenImagesFormatError(f"{path}: not valid json: {error}") from None
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise OpenImagesFormatError(f"{path}: no '{key}' list (not a COCO detection file)")
    category_ids = sorted(c["id"] for c in coco["categories"])
    class_of = {c: i for i, c in enumerate(category_ids)}
    images = sorted(coco["images"], key=lambda im: im["id"])
    row = {im["id"]: i for i, im in enumerate(images)}
    sizes = [(int(im["height"]), int(im["width"])) for im in images]
    boxes = [[] for _ in images]
    labels = [[] for _ in images]
    skipped = collections.Counter()
    for ann in coco["annotations"]:
        i = row.get(ann["image_id"])
        if i is None:
            skipped["unknown image"] += 1
            continue
        if ann["category_id"] not in class_of:
            skipped["unknown category"] += 1
            continue
        h, w = sizes[i]
        x, y, bw, bh = ann["bbox"]
        x1, y1 = min(max(x, 0.0), w), min(max(y, 0.0), h)
        x2, y2 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
        if not (x2 > x1 and y2 > y1):
            skipped["box without area inside its image"] += 1
            continue
        boxes[i].append((x1, y1, x2, y2))
        labels[i].append(class_of[ann["category_id"]])
    if skipped and log is not None:
        log(f"{path}: skipped annotations: " + ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())))
    return Split(root, split, coco, [im["id"] for im in images], [im["file_name"] for im in images], sizes,
                 [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes],
                 [np.asarray(c, dtype=np.int64) for c in labels], category_ids, dict(skipped))


def write_split(root: str, split: str, coco: dict, jpegs: dict[str, bytes]) -> None:
    """The writer: the json and the JPEGs (file name -> bytes) in the real layout."""
    os.makedirs(os.path.join(root, split, "data"), exist_ok=True)
    os.makedirs(os.path.join(root, split, "labels"), exist_ok=True)
    for name, data in jpegs.items():
        with open(image_path(root, split, name), "wb") as f:
            f.write(data)
    with open(labels_path(root, split), "w") as f:
        json.dump(coco, f)

"""OpenImages layout: reader skips (counted) bad annotations, a corrupt JPEG is a clear error, the loader
flips and resizes boxes with the image, and a global batch is the same whatever the world size."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.openimages.format import OpenImagesFormatError, labels_path, read_split, write_split
from pipelines.openimages.loader import EvalLoader, TrainLoader, decode, flip_boxes, transform
from pipelines.openimages.synthetic import write_synthetic_openimages


def _jpeg(w, h) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 100, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_reader_clamps_and_counts_skips(tmp_path):
    coco = {"images": [{"id": 7, "file_name": "a.jpg", "width": 40, "height": 30}],
            "categories": [{"id": 5, "name": "x"}, {"id": 2, "name": "y"}],
            "annotations": [{"image_id": 7, "category_id": 5, "bbox": [30, 20, 20, 20], "iscrowd": 1},  # clamped
                            {"image_id": 8, "category_id": 5, "bbox": [0, 0, 5, 5]},   # unknown image
                            {"image_id": 7, "category_id": 9, "bbox": [0, 0, 5, 5]},   # unknown category
                            {"image_id": 7, "category_id": 2, "bbox": [50, 0, 5, 5]}]}  # outside the image
    write_split(str(tmp_path), "train", coco, {"a.jpg": _jpeg(40, 30)})
    messages = []
    split = read_split(str(tmp_path), "train", log=messages.append)
    assert split.boxes[0].tolist() == [[30.0, 20.0, 40.0, 30.0]] and split.labels[0].tolist() == [1]  # id 5 -> 1
    assert split.category_ids == [2, 5]
    assert split.skipped == {"unknown image": 1, "unknown category": 1, "box without area inside its image": 1}
    assert len(messages) == 1 and "skipped" in messages[0]


def test_corrupt_jpeg_and_bad_json_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(OpenImagesFormatError, match="bad.jpg"):
        decode(str(bad))
    write_split(str(tmp_path), "train", {"images": [], "annotations": [], "categories": []}, {})
    with open(labels_path(str(tmp_path), "train"), "w") as f:
        json.dump({"images": []}, f)
    with pytest.raises(OpenImagesFormatError, match="annotations"):
        read_split(str(tmp_path), "train")


def test_flip_and_resize_move_boxes_with_the_image():
    image = torch.zeros(3, 20, 40, dtype=torch.uint8)
    image[:, 5:10, 2:12] = 255  # a white box x 2..12, y 5..10
    boxes = torch.tensor([[2.0, 5.0, 12.0, 10.0]])
    assert flip_boxes(boxes, 40).tolist() == [[28.0, 5.0, 38.0, 10.0]]
    out, scaled = transform(image, boxes, True, 80)
    assert scaled.tolist() == [[56.0, 20.0, 76.0, 40.0]]
    bright = (out[0] > 0).nonzero()
    assert bright[:, 1].min().item() >= 55 and bright[:, 1].max().item() <= 76


def test_train_batches_do_not_depend_on_world_size(tmp_path):
    write_synthetic_openimages(str(tmp_path), classes=3, train_images=16, val_images=5, min_side=40, max_side=60,
                               max_objects=2, seed=0)
    common = dict(global_batch_size=8, image_size=32, seed=3, num_workers=0, log=None)
    one = next(iter(TrainLoader(str(tmp_path), rank=0, world_size=1, **common)))
    halves = [next(iter(TrainLoader(str(tmp_path), rank=r, world_size=2, **common))) for r in (0, 1)]
    assert torch.equal(one.images, torch.cat([h.images for h in halves]))
    assert one.image_ids.tolist() == sum((h.image_ids.tolist() for h in halves), [])
    seen = [i for r in (0, 1) for b in EvalLoader(str(tmp_path), batch_size=2, rank=r, world_size=2, image_size=32,
                                                  num_workers=0, log=None) for i in b.image_ids.tolist()]
    assert sorted(seen) == list(range(17, 22))

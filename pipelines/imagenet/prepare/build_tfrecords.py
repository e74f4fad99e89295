"""Convert extracted ILSVRC-2012 JPEG folders into the reference TFRecord layout.

    python -m pipelines.imagenet.prepare.build_tfrecords --train-dir RAW/train --val-dir RAW/val \
        --val-labels RAW/imagenet_2012_validation_synset_labels.txt --out DATA --workers 16

Train: RAW/train/<synset>/*.JPEG; labels are 1 + the synset's position in sorted order (1..1000).
Validation: either RAW/val/<synset>/*.JPEG, or a flat RAW/val plus a label file, either one synset
per line for the images in sorted filename order (tensorflow/models' validation_synset_labels), or
"<filename> <synset>" per line.

Only the offline processing the rules allow is done: the few PNG files are re-encoded as JPEG and
CMYK JPEGs converted to RGB (quality 100); every other file's bytes are copied unchanged. Train
images are shuffled (seeded) before sharding, as the reference converter does, so that a shard
holds a mix of classes; validation keeps its order. Writes 1024 train and 128 validation shards.
"""

from __future__ import annotations

import argparse
import csv
import io
import multiprocessing
import os
import random
import sys
from collections import defaultdict

import numpy as np
from PIL import Image

from pipelines.imagenet.format import NUM_CLASSES, SPLIT_SHARDS, encode_image_example, shard_name
from pipelines.tfrecord import TFRecordWriter, bytes_feature, int64_feature

# (path, stored label 1..1000, synset)
Item = tuple[str, int, str]


def _listdir_files(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name)))


def train_items(train_dir: str) -> tuple[list[Item], list[str]]:
    synsets = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if not 1 <= len(synsets) <= NUM_CLASSES:
        raise ValueError(f"{train_dir}: {len(synsets)} class folders, expected 1..{NUM_CLASSES}")
    items = [(os.path.join(train_dir, synset, name), label + 1, synset)
             for label, synset in enumerate(synsets)
             for name in _listdir_files(os.path.join(train_dir, synset))]
    return items, synsets


def val_items(val_dir: str, synsets: list[str], labels_file: str | None) -> list[Item]:
    label_of = {synset: label + 1 for label, synset in enumerate(synsets)}
    subfolders = sorted(d for d in os.listdir(val_dir) if os.path.isdir(os.path.join(val_dir, d)))
    if subfolders:
        pairs = [(os.path.join(synset, name), synset) for synset in subfolders
                 for name in _listdir_files(os.path.join(val_dir, synset))]
    else:
        if labels_file is None:
            raise ValueError(f"{val_dir} is flat: pass --val-labels")
        files = _listdir_files(val_dir)
        with open(labels_file) as f:
            rows = [line.split() for line in f if line.strip()]
        if all(len(row) == 1 for row in rows):
            if len(rows) != len(files):
                raise ValueError(f"{labels_file}: {len(rows)} labels for {len(files)} files in {val_dir}")
            pairs = [(name, row[0]) for name, row in zip(files, rows)]
        elif all(len(row) == 2 for row in rows):
            pairs = sorted((name, synset) for name, synset in rows)
        else:
            raise ValueError(f"{labels_file}: lines must be '<synset>' or '<filename> <synset>'")
    unknown = sorted({synset for _, synset in pairs} - label_of.keys())
    if unknown:
        raise ValueError(f"validation synsets not among the train classes: {unknown[:5]}")
    return [(os.path.join(val_dir, name), label_of[synset], synset) for name, synset in pairs]


def read_bboxes(csv_path: str | None) -> dict[str, list[tuple[float, float, float, float]]]:
    """'<filename>,xmin,ymin,xmax,ymax' rows (normalised) -> {basename: [(ymin, xmin, ymax, xmax)]}."""
    boxes: dict[str, list] = defaultdict(list)
    if csv_path:
        with open(csv_path, newline="") as f:
            for name, xmin, ymin, xmax, ymax in csv.reader(f):
                boxes[name].append((float(ymin), float(xmin), float(ymax), float(xmax)))
    return boxes


def jpeg_bytes(path: str) -> tuple[bytes, int, int]:
    """The file's JPEG bytes, unchanged unless it is a PNG or a CMYK JPEG; also (height, width)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format == "JPEG" and image.mode != "CMYK":
                return raw, image.height, image.width
            if image.format not in ("JPEG", "PNG"):
                raise ValueError(f"{path}: {image.format} image; only JPEG and PNG are allowed")
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=100)
            return out.getvalue(), image.height, image.width
    except OSError as error:
        raise ValueError(f"{path}: not a readable image: {error}") from None


def write_shard(task: tuple[str, list[Item], dict]) -> int:
    path, items, boxes = task
    with TFRecordWriter(path) as writer:
        for image_path, label, synset in items:
            jpeg, height, width = jpeg_bytes(image_path)
            name = os.path.basename(image_path)
            extra = {"image/class/synset": bytes_feature([synset]), "image/format": bytes_feature(["JPEG"]),
                     "image/filename": bytes_feature([name]), "image/height": int64_feature([height]),
                     "image/width": int64_feature([width])}
            writer.write(encode_image_example(jpeg, label, text=synset, bboxes=boxes.get(name, ()),
                                              extra=extra))
    return len(items)


def write_split(items: list[Item], out_dir: str, split: str, num_shards: int, workers: int,
                boxes: dict | None = None) -> int:
    if not 1 <= num_shards <= len(items):
        raise ValueError(f"{split}: {num_shards} shards for {len(items)} images")
    chunks = np.array_split(np.arange(len(items)), num_shards)
    tasks = []
    for k, chunk in enumerate(chunks):
        shard_items = [items[i] for i in chunk]
        names = (os.path.basename(path) for path, _, _ in shard_items)
        shard_boxes = {name: boxes[name] for name in names if name in boxes} if boxes else {}
        tasks.append((os.path.join(out_dir, shard_name(split, k, num_shards)), shard_items, shard_boxes))
    if workers <= 1:
        return sum(map(write_shard, tasks))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return sum(pool.imap_unordered(write_shard, tasks))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-dir", required=True)
    parser.add_argument("--val-dir", required=True)
    parser.add_argument("--val-labels", help="label file for a flat validation folder")
    parser.add_argument("--train-bboxes", help="optional CSV: filename,xmin,ymin,xmax,ymax (normalised)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-shards", type=int, default=SPLIT_SHARDS["train"])
    parser.add_argument("--val-shards", type=int, default=SPLIT_SHARDS["validation"])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0, help="seed of the train shuffle")
    args = parser.parse_args(argv)

    train, synsets = train_items(args.train_dir)
    if len(synsets) != NUM_CLASSES:
        print(f"warning: {len(synsets)} classes, not {NUM_CLASSES}", file=sys.stderr)
    validation = val_items(args.val_dir, synsets, args.val_labels)
    random.Random(args.seed).shuffle(train)
    os.makedirs(args.out, exist_ok=True)
    counts = {"train": write_split(train, args.out, "train", args.train_shards, args.workers,
                                   read_bboxes(args.train_bboxes)),
              "validation": write_split(validation, args.out, "validation", args.val_shards, args.workers)}
    print(f"wrote {counts['train']} train and {counts['validation']} validation records "
          f"({len(synsets)} classes) to {args.out}")


if __name__ == "__main__":
    main()

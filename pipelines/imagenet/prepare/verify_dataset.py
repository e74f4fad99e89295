"""Check a converted ImageNet: shard counts, record counts, every record's CRCs and features.

    python -m pipelines.imagenet.prepare.verify_dataset --data-dir DATA            # the real dataset
    python -m pipelines.imagenet.prepare.verify_dataset --data-dir SYN --train-records 1536 \
        --val-records 512 --train-shards 8 --val-shards 4 --num-classes 16        # a synthetic one

Every record is read in full (both CRCs), parsed as a tf.Example, and must hold a JPEG (SOI marker)
and one label in 1..1000; every class 1..num_classes must appear in each split. Prints one line per
problem and exits 1 if there is any. Shards are checked in parallel with --workers processes.

--index-dir DIR also builds the CRC-verified record indexes the DALI loader needs (format.py
build_index(verify=True)) in DIR, the loader's `data.index_dir`: done here, offline, the first timed
run only finds them (a stat and 8 KiB read per shard) instead of verifying 140 GB after run_start.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from collections import Counter

from pipelines.imagenet.format import (
    NUM_CLASSES,
    SPLIT_RECORDS,
    SPLIT_SHARDS,
    ImageNetFormatError,
    build_index,
    decode_image_example,
    find_shards,
)
from pipelines.tfrecord import TFRecordError, iter_records

_JPEG_SOI = b"\xff\xd8"


def check_shard(path: str) -> tuple[str, Counter, list[str]]:
    """(path, label counts (0-based), problems) of one shard; stops at its first broken record."""
    labels: Counter = Counter()
    try:
        for number, payload in enumerate(iter_records(path)):
            record = decode_image_example(payload, f"{path} (record {number})")
            if not record.jpeg.startswith(_JPEG_SOI):
                return path, labels, [f"{path} (record {number}): 'image/encoded' is not a JPEG"]
            labels[record.label] += 1
    except (TFRecordError, ImageNetFormatError, OSError) as error:
        return path, labels, [str(error)]
    return path, labels, []


def verify_split(data_dir: str, split: str, *, expected_shards: int, expected_records: int,
                 num_classes: int, workers: int) -> list[str]:
    """Problems found in one split (empty if it is sound)."""
    try:
        shards = find_shards(data_dir, split)
    except (ImageNetFormatError, FileNotFoundError) as error:
        return [str(error)]
    problems = []
    if len(shards) != expected_shards:
        problems.append(f"{data_dir}: {len(shards)} {split} shards, expected {expected_shards}")
    if workers > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = pool.map(check_shard, shards, chunksize=1)
    else:
        results = [check_shard(shard) for shard in shards]
    labels: Counter = Counter()
    for _, shard_labels, shard_problems in results:
        labels.update(shard_labels)
        problems.extend(shard_problems)
    total = sum(labels.values())
    if total != expected_records:
        problems.append(f"{data_dir}: {total} readable {split} records, expected {expected_records}")
    absent = [label + 1 for label in range(num_classes) if labels[label] == 0]
    if absent:
        problems.append(f"{data_dir}: {split} has no records of labels {absent[:10]}"
                        + (f" and {len(absent) - 10} more" if len(absent) > 10 else ""))
    beyond = sorted(label + 1 for label in labels if label >= num_classes)
    if beyond:
        problems.append(f"{data_dir}: {split} has labels above {num_classes}: {beyond[:10]}")
    print(f"{split}: {len(shards)} shards, {total} records, {len(labels)} classes", flush=True)
    return problems


def _verified_index_size(data_dir: str, split: str, index_dir: str) -> int:
    return len(build_index(data_dir, split, index_dir, verify=True))


def build_verified_index(data_dir: str, split: str, index_dir: str, workers: int) -> list[str]:
    """Build the split's CRC-verified DALI index in index_dir; `workers` processes share the shards
    (build_index's per-shard locks). Problems found (empty if none)."""
    jobs = [(data_dir, split, index_dir)] * max(1, workers)
    try:
        if workers > 1:
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                sizes = pool.starmap(_verified_index_size, jobs, chunksize=1)
        else:
            sizes = [_verified_index_size(*jobs[0])]
    except (TFRecordError, ImageNetFormatError, OSError) as error:
        return [str(error)]
    print(f"{split}: verified index of {sizes[0]} records in {index_dir}", flush=True)
    return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--train-records", type=int, default=SPLIT_RECORDS["train"])
    parser.add_argument("--val-records", type=int, default=SPLIT_RECORDS["validation"])
    parser.add_argument("--train-shards", type=int, default=SPLIT_SHARDS["train"])
    parser.add_argument("--val-shards", type=int, default=SPLIT_SHARDS["validation"])
    parser.add_argument("--num-classes", type=int, default=NUM_CLASSES)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--index-dir", default=None,
                        help="also write the CRC-verified DALI indexes here (the run's data.index_dir)")
    args = parser.parse_args(argv)
    problems = []
    for split, shards, records in (("train", args.train_shards, args.train_records),
                                   ("validation", args.val_shards, args.val_records)):
        problems += verify_split(args.data_dir, split, expected_shards=shards, expected_records=records,
                                 num_classes=args.num_classes, workers=args.workers)
    if args.index_dir and not problems:
        for split in ("train", "validation"):
            problems += build_verified_index(args.data_dir, split, args.index_dir, args.workers)
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    print("dataset OK" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

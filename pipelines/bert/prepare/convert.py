"""TFRecords -> the memory-mappable store the training reads (store.py), offline and untimed.

    python -m pipelines.bert.prepare.convert --data-dir /data/bert --out /data/bert/store --workers 32

Reads `part-XXXXX-of-NNNNN` (training) and `eval_10k` from --data-dir and writes
    <out>/train/index.json + one part per shard       <out>/eval/index.json + eval_10k/
Shards convert in parallel, one process each; a part already converted (its directory exists) is kept,
so an interrupted conversion resumes. Every record is CRC-checked and validated, and the first bad one
stops the conversion with its file and record number. The result is lossless: store.StorePart can
re-create every TFRecord example exactly.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

import numpy as np

from pipelines.bert.format import EVAL_FILE, MAX_PREDICTIONS_PER_SEQ, MAX_SEQ_LENGTH, find_train_shards
from pipelines.bert.store import convert_tfrecord, write_index

_ID_DTYPES = {"uint16": np.uint16, "int32": np.int32}


def _convert_one(job: tuple[str, str, int, int, str, bool]) -> tuple[str, int]:
    source, part_dir, max_seq_length, max_predictions, id_dtype, keep = job
    if keep and os.path.isdir(part_dir):
        n = len(np.load(os.path.join(part_dir, "next_sentence_labels.npy"), mmap_mode="r", allow_pickle=False))
        return os.path.basename(part_dir), n
    n = convert_tfrecord(source, part_dir, max_seq_length, max_predictions, _ID_DTYPES[id_dtype])
    return os.path.basename(part_dir), n


def convert_split(sources: list[str], store_dir: str, *, max_seq_length: int = MAX_SEQ_LENGTH,
                  max_predictions: int = MAX_PREDICTIONS_PER_SEQ, workers: int = 1, id_dtype: str = "uint16",
                  resume: bool = True) -> int:
    """Convert TFRecord files into one store (a part per file); returns the number of sequences."""
    os.makedirs(store_dir, exist_ok=True)
    jobs = [(src, os.path.join(store_dir, os.path.basename(src)), max_seq_length, max_predictions, id_dtype, resume)
            for src in sources]
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            parts = pool.map(_convert_one, jobs, chunksize=1)
    else:
        parts = [_convert_one(job) for job in jobs]
    write_index(store_dir, parts, max_seq_length, max_predictions,
                {"sources": [os.path.abspath(s) for s in sources]})
    return sum(n for _, n in parts)


def convert_dataset(data_dir: str, out_dir: str, **kwargs) -> dict[str, int]:
    eval_path = os.path.join(data_dir, EVAL_FILE)
    if not os.path.exists(eval_path):
        raise FileNotFoundError(f"{eval_path}: missing (pick_eval_samples.py writes it)")
    return {"train": convert_split(find_train_shards(data_dir), os.path.join(out_dir, "train"), **kwargs),
            "eval": convert_split([eval_path], os.path.join(out_dir, "eval"), **kwargs)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.bert.prepare.convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--max-seq-length", type=int, default=MAX_SEQ_LENGTH)
    p.add_argument("--max-predictions-per-seq", type=int, default=MAX_PREDICTIONS_PER_SEQ)
    p.add_argument("--id-dtype", choices=sorted(_ID_DTYPES), default="uint16",
                   help="token id type; uint16 holds BERT's 30522-word vocabulary")
    a = p.parse_args(argv)
    t = time.time()
    counts = convert_dataset(a.data_dir, a.out, max_seq_length=a.max_seq_length,
                             max_predictions=a.max_predictions_per_seq, workers=a.workers, id_dtype=a.id_dtype)
    print(f"converted {counts['train']} training and {counts['eval']} eval sequences into {a.out} "
          f"in {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

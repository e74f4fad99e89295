"""Step 1 of the reference chain: one Criteo 1TB day (TSV) -> dense, sparse and label .npy files.

    python -m pipelines.criteo.prepare.tsv_to_npy --in-dir RAW --out-dir STEP1 [--days 0-23]

A line is: label, 13 integer features, 26 categorical features (8 hex digits), tab-separated, any field
may be empty. As the reference (torchrec `BinaryCriteoUtils.tsv_to_npys`):
  - day_{i}_dense.npy   float32 (N, 13): log(x + 3), missing -> 0 first
  - day_{i}_sparse.npy  int32 (N, 26): the hex value, missing -> 0. 32-bit values above 2^31 are kept as
    their bit pattern (a bijection, which is all the next step needs: ids are only compared)
  - day_{i}_labels.npy  int32 (N, 1)
Lines are split by Python's str.split (C speed); the numbers are converted column-wise with numpy,
the hex digits included, so there is no per-field Python work. Days run in parallel with --workers.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from pipelines.criteo.format import NUM_DENSE, NUM_SPARSE

_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
_CHUNK_LINES = 1 << 20
# ASCII code -> hex digit value (0 for anything else; '' pads to "00000000").
_HEX = np.zeros(256, dtype=np.uint32)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def dense_transform(counts: np.ndarray) -> np.ndarray:
    """log(x + 3), the reference's transform of the (missing -> 0) integer features. Computed as torchrec
    does, a float32 log of the shifted integers, so the values are bit-identical to the reference's."""
    counts = np.asarray(counts)
    if counts.size and counts.min() <= -3:
        raise ValueError(f"integer feature value {counts.min()} <= -3: log(x + 3) is undefined")
    return np.log((counts.astype(np.int64) + 3).astype(np.float32), dtype=np.float32)


def parse_hex_column(values: np.ndarray) -> np.ndarray:
    """Array of hex strings (at most 8 digits, '' for missing) -> int32 (bit pattern of the uint32)."""
    raw = np.char.rjust(values.astype("U8"), 8, "0").astype("S8")
    digits = _HEX[np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(-1, 8)]
    out = np.zeros(len(values), dtype=np.uint32)
    for i in range(8):
        out = (out << np.uint32(4)) | digits[:, i]
    return out.view(np.int32)


def parse_lines(lines: list[str], where: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = [line.rstrip("\r\n").split("\t") for line in lines]
    bad = next((i for i, r in enumerate(rows) if len(r) != _FIELDS), None)
    if bad is not None:
        raise ValueError(f"{where} line {bad + 1}: {len(rows[bad])} fields, expected {_FIELDS}")
    table = np.array(rows, dtype=str)
    ints = table[:, :1 + NUM_DENSE]
    ints = np.where(ints == "", "0", ints).astype(np.int64)
    labels = ints[:, :1].astype(np.int32)
    dense = dense_transform(ints[:, 1:])
    sparse = np.stack([parse_hex_column(table[:, 1 + NUM_DENSE + k]) for k in range(NUM_SPARSE)], axis=1)
    return dense, sparse, labels


def convert_day(tsv_path: str, out_dir: str, day: int) -> int:
    dense_parts, sparse_parts, label_parts = [], [], []
    with open(tsv_path, "r", encoding="latin-1") as f:
        done = 0
        while True:
            lines = f.readlines(_CHUNK_LINES * 160)  # ~160 bytes per line
            if not lines:
                break
            d, s, labels = parse_lines(lines, f"{tsv_path} (after line {done})")
            dense_parts.append(d)
            sparse_parts.append(s)
            label_parts.append(labels)
            done += len(lines)
    empty = (np.zeros((0, NUM_DENSE), np.float32), np.zeros((0, NUM_SPARSE), np.int32), np.zeros((0, 1), np.int32))
    for part, arrays, blank in zip(("dense", "sparse", "labels"), (dense_parts, sparse_parts, label_parts), empty):
        np.save(os.path.join(out_dir, f"day_{day}_{part}.npy"), np.concatenate(arrays) if arrays else blank)
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.criteo.prepare.tsv_to_npy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-dir", required=True, help="holds day_0 ... day_23 (uncompressed TSV)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--days", default="0-23")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    from pipelines.criteo.prepare.multi_hot import _days

    os.makedirs(args.out_dir, exist_ok=True)
    days = _days(args.days)
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        counts = pool.map(convert_day, [os.path.join(args.in_dir, f"day_{d}") for d in days],
                          [args.out_dir] * len(days), days)
        for day, n in zip(days, counts):
            print(f"day {day}: {n} rows", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

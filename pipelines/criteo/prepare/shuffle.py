"""Step 3 of the reference chain: shuffle the training days jointly, sample by sample; keep the last day.

    python -m pipelines.criteo.prepare.shuffle --dense-labels-dir STEP1 --sparse-dir STEP2 --out-dir STEP3

The reference (torchrec `BinaryCriteoUtils.shuffle`, `--random_seed 0`) stacks days 0..22 into one float32
table [dense | sparse | label], calls `np.random.seed(seed); np.random.shuffle(table)` and cuts the result
back into days of the original sizes; day 23 is copied untouched. Two consequences are reproduced here:
  - the order: the legacy generator's shuffle of a table draws exactly the swaps of
    `np.random.permutation(n)`, so output row r is input row perm[r];
  - the values: ids pass through float32, so ids above 2^24 in days 0..22 come back rounded to float32's
    precision (day 23 keeps exact ids). `--exact-ids` skips that rounding (not the reference's data).
Instead of a table of all days in memory (~700 GB), rows are gathered per output day from the
memory-mapped inputs, in sorted index order for locality. Memory: the permutation (8 bytes per training
row) plus one output day.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

_GATHER_ROWS = 1 << 22


def reference_permutation(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).permutation(rows)


def _gather(sources: list[np.ndarray], starts: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows (global indices into the concatenation of `sources`) in the given order."""
    out = np.empty((len(rows),) + sources[0].shape[1:], dtype=sources[0].dtype)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    which = np.searchsorted(starts, sorted_rows, side="right") - 1
    gathered = np.empty_like(out)
    for i, src in enumerate(sources):
        sel = which == i
        if sel.any():
            gathered[sel] = src[sorted_rows[sel] - starts[i]]
    out[order] = gathered
    return out


def shuffle_days(dense_labels_dir: str, sparse_dir: str, out_dir: str, train_days: list[int], last_day: int,
                 seed: int = 0, exact_ids: bool = False) -> None:
    os.makedirs(out_dir, exist_ok=True)
    parts = {"dense": dense_labels_dir, "labels": dense_labels_dir, "sparse": sparse_dir}
    sources = {part: [np.load(os.path.join(d, f"day_{day}_{part}.npy"), mmap_mode="r") for day in train_days]
               for part, d in parts.items()}
    sizes = [a.shape[0] for a in sources["dense"]]
    for part, arrays in sources.items():
        if [a.shape[0] for a in arrays] != sizes:
            raise ValueError(f"{part} files have {[a.shape[0] for a in arrays]} rows, dense files {sizes}")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    perm = reference_permutation(int(sum(sizes)), seed)
    first = 0
    for day, n in zip(train_days, sizes):
        for part, arrays in sources.items():
            out = np.lib.format.open_memmap(os.path.join(out_dir, f"day_{day}_{part}.npy"), mode="w+",
                                            dtype=arrays[0].dtype, shape=(n,) + arrays[0].shape[1:])
            for a in range(0, n, _GATHER_ROWS):
                block = _gather(arrays, starts, perm[first + a:first + min(n, a + _GATHER_ROWS)])
                if part == "sparse" and not exact_ids:
                    block = block.astype(np.float32).astype(np.int32)  # the reference's float32 table
                out[a:a + len(block)] = block
            out.flush()
        first += n
    for part, d in parts.items():
        name = f"day_{last_day}_{part}.npy"
        shutil.copyfile(os.path.join(d, name), os.path.join(out_dir, name))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.criteo.prepare.shuffle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense-labels-dir", required=True, help="day_{i}_{dense,labels}.npy from tsv_to_npy")
    p.add_argument("--sparse-dir", required=True, help="day_{i}_sparse.npy from contiguous")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--days", type=int, default=24, help="number of days; the last one is not shuffled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-ids", action="store_true", help="skip the reference's float32 rounding of ids")
    args = p.parse_args(argv)
    shuffle_days(args.dense_labels_dir, args.sparse_dir, args.out_dir, list(range(args.days - 1)), args.days - 1,
                 args.seed, args.exact_ids)
    return 0


if __name__ == "__main__":
    sys.exit(main())

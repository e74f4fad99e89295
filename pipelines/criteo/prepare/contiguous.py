"""Step 2 of the reference chain: raw categorical values -> contiguous ids, per feature, over all days.

    python -m pipelines.criteo.prepare.contiguous --in-dir STEP1 --out-dir STEP2 [--days 0-23]

The reference runs torchrec's `BinaryCriteoUtils.sparse_to_contiguous` with frequency threshold 0: for each
feature, scanning day 0 to day 23 row by row, a value gets the next free id (from 2) when first seen.
That is done here without a Python dictionary or holding all days at once: per feature, a sorted array of
the values seen so far with their ids; each block of rows adds its new values in order of first
appearance (np.unique's first indices), then a second pass maps every block with searchsorted.
Memory: about 16 bytes per distinct value of the feature being built, plus one block of rows.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from pipelines.criteo.format import NUM_SPARSE

FIRST_ID = 2  # torchrec reserves 1 for values under the frequency threshold (none at threshold 0)
_BLOCK_ROWS = 1 << 22


class ContiguousMap:
    """First-appearance ids for one feature: keys sorted, ids aligned with them."""

    def __init__(self, first_id: int = FIRST_ID):
        self.keys = np.empty(0, dtype=np.int64)
        self.ids = np.empty(0, dtype=np.int64)
        self.next_id = first_id

    def add(self, values: np.ndarray) -> None:
        unique, first = np.unique(values.astype(np.int64), return_index=True)
        pos = np.searchsorted(self.keys, unique)
        known = pos < len(self.keys)
        known[known] = self.keys[pos[known]] == unique[known]
        new, new_first = unique[~known], first[~known]
        if not len(new):
            return
        new_ids = np.empty(len(new), dtype=np.int64)
        new_ids[np.argsort(new_first, kind="stable")] = np.arange(self.next_id, self.next_id + len(new))
        self.next_id += len(new)
        keys = np.concatenate([self.keys, new])
        order = np.argsort(keys, kind="stable")
        self.keys, self.ids = keys[order], np.concatenate([self.ids, new_ids])[order]

    def lookup(self, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.keys, values.astype(np.int64))
        return self.ids[pos]


def build_maps(in_paths: list[str], features: int = NUM_SPARSE) -> list[ContiguousMap]:
    maps = [ContiguousMap() for _ in range(features)]
    for path in in_paths:
        data = np.load(path, mmap_mode="r")
        for start in range(0, data.shape[0], _BLOCK_ROWS):
            block = np.asarray(data[start:start + _BLOCK_ROWS])
            for k, m in enumerate(maps):
                m.add(block[:, k])
    return maps


def apply_maps(in_path: str, out_path: str, maps: list[ContiguousMap]) -> None:
    data = np.load(in_path, mmap_mode="r")
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.int32, shape=data.shape)
    for start in range(0, data.shape[0], _BLOCK_ROWS):
        block = np.asarray(data[start:start + _BLOCK_ROWS])
        for k, m in enumerate(maps):
            ids = m.lookup(block[:, k])
            if len(ids) and ids.max() > np.iinfo(np.int32).max:
                raise OverflowError(f"{in_path}: feature {k} has more than 2^31 distinct values")
            out[start:start + len(block), k] = ids
    out.flush()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.criteo.prepare.contiguous", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-dir", required=True, help="day_{i}_sparse.npy from tsv_to_npy")
    p.add_argument("--out-dir", required=True, help="day_{i}_sparse.npy with contiguous ids")
    p.add_argument("--days", default="0-23", help="all days the ids are shared over, in the reference's order")
    args = p.parse_args(argv)
    from pipelines.criteo.prepare.multi_hot import _days

    os.makedirs(args.out_dir, exist_ok=True)
    days = _days(args.days)
    paths = [os.path.join(args.in_dir, f"day_{d}_sparse.npy") for d in days]
    maps = build_maps(paths)
    print("distinct values per feature: " + ",".join(str(m.next_id - FIRST_ID) for m in maps), flush=True)
    for day, path in zip(days, paths):
        apply_maps(path, os.path.join(args.out_dir, f"day_{day}_sparse.npy"), maps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Step 4 of the reference chain: one-hot contiguous ids -> the multi-hot npz files training reads.

    python -m pipelines.criteo.prepare.multi_hot --in-dir SHUFFLED --out-dir DATA [--tables-dir TMP] [--days 0-23]

The reference (`materialize_synthetic_multihot_dataset.py --multi_hot_distribution_type uniform`) seeds
numpy's legacy global generator with 0 once, then for each feature k in order draws a lookup table of
TABLE_ROWS[k] rows: row j = [j, randint(0, rows_k) x (MULTI_HOT_SIZES[k] - 1)]. A sample's id j becomes row
(j % rows_k) of that table. The tables are drawn here in row chunks from the same generator, which yields
the same stream as one big draw (the generator fills C order, one bounded draw per element), and are kept
on disk as .npy (about 24 GiB for the full sizes) instead of in memory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

import numpy as np

from pipelines.criteo.format import MULTI_HOT_SIZES, TABLE_ROWS, day_paths

SEED = 0
_CHUNK_ROWS = 1 << 20


def iter_lookup_tables(table_rows=TABLE_ROWS, multi_hot_sizes=MULTI_HOT_SIZES, seed: int = SEED,
                       chunk_rows: int = _CHUNK_ROWS):
    """Yields (feature, first_row, int32 block of rows) in the reference's draw order."""
    rng = np.random.RandomState(seed)
    for k, (rows, size) in enumerate(zip(table_rows, multi_hot_sizes)):
        for start in range(0, rows, chunk_rows):
            stop = min(rows, start + chunk_rows)
            block = np.empty((stop - start, size), dtype=np.int32)
            block[:, 0] = np.arange(start, stop, dtype=np.int32)
            if size > 1:
                block[:, 1:] = rng.randint(0, rows, size=(stop - start, size - 1))
            yield k, start, block


def lookup_tables(table_rows=TABLE_ROWS, multi_hot_sizes=MULTI_HOT_SIZES, seed: int = SEED) -> list[np.ndarray]:
    """All tables in memory: for small (debug, synthetic) sizes."""
    tables = [np.empty((rows, size), dtype=np.int32) for rows, size in zip(table_rows, multi_hot_sizes)]
    for k, start, block in iter_lookup_tables(table_rows, multi_hot_sizes, seed):
        tables[k][start:start + len(block)] = block
    return tables


def write_lookup_tables(tables_dir: str, table_rows=TABLE_ROWS, multi_hot_sizes=MULTI_HOT_SIZES,
                        seed: int = SEED) -> list[np.ndarray]:
    """Tables as `multi_hot_table_{k}.npy` in tables_dir, returned memory-mapped."""
    os.makedirs(tables_dir, exist_ok=True)
    paths = [os.path.join(tables_dir, f"multi_hot_table_{k}.npy") for k in range(len(table_rows))]
    out = [np.lib.format.open_memmap(p, mode="w+", dtype=np.int32, shape=(rows, size))
           for p, rows, size in zip(paths, table_rows, multi_hot_sizes)]
    for k, start, block in iter_lookup_tables(table_rows, multi_hot_sizes, seed):
        out[k][start:start + len(block)] = block
    for table in out:
        table.flush()
    return [np.load(p, mmap_mode="r") for p in paths]


def expand(one_hot: np.ndarray, tables: list[np.ndarray]) -> list[np.ndarray]:
    """(N, 26) one-hot ids -> 26 int32 arrays (N, size_k): table_k[id % rows_k]."""
    out = []
    for k, table in enumerate(tables):
        ids = one_hot[:, k].astype(np.int64) % table.shape[0]
        out.append(np.ascontiguousarray(table[ids], dtype=np.int32))
    return out


def materialize_day(in_dir: str, out_dir: str, day: int, tables: list[np.ndarray],
                    copy_dense_and_labels: bool = True) -> None:
    sparse_in = os.path.join(in_dir, f"day_{day}_sparse.npy")
    one_hot = np.load(sparse_in, mmap_mode="r")
    if one_hot.ndim != 2 or one_hot.shape[1] != len(tables):
        raise ValueError(f"{sparse_in}: expected (N, {len(tables)}), found {one_hot.shape}")
    dense_out, labels_out, sparse_out = day_paths(out_dir, day)
    # np.savez needs whole arrays; build each feature's member from row chunks of the memory-mapped input.
    members = {}
    for k, table in enumerate(tables):
        member = np.empty((one_hot.shape[0], table.shape[1]), dtype=np.int32)
        for start in range(0, one_hot.shape[0], _CHUNK_ROWS):
            ids = np.asarray(one_hot[start:start + _CHUNK_ROWS, k]).astype(np.int64) % table.shape[0]
            member[start:start + len(ids)] = table[ids]
        members[str(k)] = member
    np.savez(sparse_out, **members)
    del members
    if copy_dense_and_labels:
        for part, dst in (("dense", dense_out), ("labels", labels_out)):
            src = os.path.join(in_dir, f"day_{day}_{part}.npy")
            if os.path.abspath(src) != os.path.abspath(dst):
                shutil.copyfile(src, dst)


def _days(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(d) for d in text.split(",")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.criteo.prepare.multi_hot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--in-dir", required=True, help="contiguous, shuffled day_{i}_{dense,sparse,labels}.npy")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--tables-dir", default="", help="where the lookup tables go (default: OUT_DIR/.tables)")
    p.add_argument("--days", default="0-23")
    p.add_argument("--table-rows", default=",".join(map(str, TABLE_ROWS)), help="26 comma-separated row counts")
    args = p.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    table_rows = tuple(int(r) for r in args.table_rows.split(","))
    tables = write_lookup_tables(args.tables_dir or os.path.join(args.out_dir, ".tables"), table_rows)
    for day in _days(args.days):
        print(f"materialising day {day}", flush=True)
        materialize_day(args.in_dir, args.out_dir, day, tables)
    return 0


if __name__ == "__main__":
    sys.exit(main())

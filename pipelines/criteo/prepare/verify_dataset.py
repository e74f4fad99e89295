"""Check a multi-hot Criteo directory end to end: every day's three files agree (format.open_day), the
split sizes are the ones the config expects, and every id lies inside its table (a full scan).

    python -m pipelines.criteo.prepare.verify_dataset --data-dir DATA [--days 24] [--train-samples N]
        [--eval-samples M] [--table-rows 40000000,39060,...]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from pipelines.criteo.format import (
    EVAL_SAMPLES,
    MULTI_HOT_SIZES,
    TABLE_ROWS,
    TRAIN_SAMPLES,
    CriteoFormatError,
    open_day,
)

_BLOCK_ROWS = 1 << 20


def check_ids(day, table_rows) -> None:
    for k, (member, rows) in enumerate(zip(day.sparse, table_rows)):
        for start in range(0, day.rows, _BLOCK_ROWS):
            block = np.asarray(member[start:start + _BLOCK_ROWS])
            bad = block.view(np.uint32) >= rows  # negative ids wrap to large unsigned values
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise CriteoFormatError(f"{day.sparse_path}: member '{k}' row {start + r} holds id {block[r, c]}, "
                                        f"outside table {k} of {rows} rows")


def verify(data_dir: str, days: int, train_samples: int | None, eval_samples: int | None,
           table_rows=TABLE_ROWS, multi_hot_sizes=MULTI_HOT_SIZES, scan_ids: bool = True) -> dict:
    opened = [open_day(data_dir, d, multi_hot_sizes) for d in range(days)]
    found = {"train_samples": sum(d.rows for d in opened[:-1]), "eval_samples": (opened[-1].rows + 1) // 2}
    for key, want in (("train_samples", train_samples), ("eval_samples", eval_samples)):
        if want is not None and found[key] != want:
            raise CriteoFormatError(f"{data_dir}: {found[key]} {key.split('_')[0]} samples, expected {want}")
    if scan_ids:
        for day in opened:
            check_ids(day, table_rows)
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.criteo.prepare.verify_dataset", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--days", type=int, default=24)
    p.add_argument("--train-samples", type=int, default=TRAIN_SAMPLES, help="-1: do not check")
    p.add_argument("--eval-samples", type=int, default=EVAL_SAMPLES, help="-1: do not check")
    p.add_argument("--table-rows", default=",".join(map(str, TABLE_ROWS)))
    args = p.parse_args(argv)
    try:
        found = verify(args.data_dir, args.days, None if args.train_samples < 0 else args.train_samples,
                       None if args.eval_samples < 0 else args.eval_samples,
                       tuple(int(r) for r in args.table_rows.split(",")))
    except CriteoFormatError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(f"OK: {found['train_samples']} training and {found['eval_samples']} validation samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write train_idx.pt / val_idx.pt: the reference's seed-42 split (pipelines/igbh/split.py).

    python -m pipelines.igbh.prepare.split_seeds --root /data/igbh
"""

from __future__ import annotations

import argparse

from pipelines.igbh.format import FULL_LABELLED_PAPERS, processed_dir
from pipelines.igbh.split import SPLIT_SEED, VAL_FRACTION, write_split


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding full/processed/")
    p.add_argument("--labelled-papers", type=int, default=FULL_LABELLED_PAPERS)
    p.add_argument("--seed", type=int, default=SPLIT_SEED)
    p.add_argument("--val-fraction", type=float, default=VAL_FRACTION)
    args = p.parse_args(argv)
    n_train, n_val = write_split(processed_dir(args.root), args.labelled_papers, seed=args.seed,
                                 val_fraction=args.val_fraction)
    print(f"wrote {n_train} train and {n_val} validation seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GovReport parquet files -> the plain-array npy form (pipelines/govreport/format.py), losslessly.

    python -m pipelines.govreport.prepare.convert_to_npy --src /data/govreport --out /data/govreport_npy

NVIDIA converts to one pickled `train.npy` of dicts {input_ids, loss_mask, seq_start_id}; the same two
arrays are written here as plain [rows, seq_length] arrays (int32 ids, bool loss mask), which load memory-mapped
without unpickling. Every row is checked on the way (length, labels equal to the ids or -100).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from pipelines.govreport.format import IGNORE, PARQUET, read_parquet, write_npy


def convert(src: str, out: str, seq_length: int) -> dict[str, int]:
    os.makedirs(out, exist_ok=True)
    rows = {}
    for split, name in PARQUET.items():
        data = read_parquet(os.path.join(src, name), seq_length)
        if int(data.input_ids.max()) >= 2**31:
            raise ValueError(f"{data.source}: token ids do not fit int32")
        labels = np.where(data.loss_mask, data.input_ids, IGNORE)
        write_npy(out, split, data.input_ids, labels)
        rows[split] = len(data)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seq-length", type=int, default=8192)
    args = p.parse_args(argv)
    print(convert(args.src, args.out, args.seq_length))
    return 0


if __name__ == "__main__":
    sys.exit(main())

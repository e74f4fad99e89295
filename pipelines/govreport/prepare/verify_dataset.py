"""Check a GovReport directory the way a run reads it: rows, lengths, labels, token range.

    python -m pipelines.govreport.prepare.verify_dataset /data/govreport [--format npy]
"""

from __future__ import annotations

import argparse
import sys

from pipelines.govreport.format import FormatError, read_split

EXPECTED = {"train": 3901, "validation": 173}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory")
    p.add_argument("--format", default="parquet", choices=("parquet", "npy"))
    p.add_argument("--seq-length", type=int, default=8192)
    p.add_argument("--vocab-size", type=int, default=32000)
    args = p.parse_args(argv)
    try:
        for split, rows in EXPECTED.items():
            data = read_split(args.directory, split, args.format, args.seq_length)
            data.check(args.seq_length, args.vocab_size, rows)
            labelled = int(data.loss_mask.sum())
            print(f"{split}: {len(data)} rows of {data.seq_length} tokens, {labelled} labelled tokens: OK")
    except FormatError as e:
        print(f"verify_dataset: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write `<type>/node_feat_fp16.pt` beside each feature table (the offline fp16 conversion the rules allow),
in row chunks so that a 1.1 TB table never sits in memory; runs read them with data.fp16_features=true.

    python -m pipelines.igbh.prepare.convert_fp16 --root /data/igbh [--types paper author ...]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from pipelines.igbh.format import NODE_TYPES, IGBHSizes, processed_dir, read_features
from runtime.atomic_write import atomic_open


def convert(pdir: str, node_type: str, sizes: IGBHSizes, chunk_rows: int = 1 << 20) -> str:
    table = read_features(pdir, node_type, sizes)
    out = os.path.join(pdir, node_type, "node_feat_fp16.pt")
    # torch.save of a tensor over a file-backed storage writes it in one pass without a second copy
    tmp = out + ".bin"
    half = np.memmap(tmp, dtype=np.float16, mode="w+", shape=table.shape)
    for start in range(0, table.shape[0], chunk_rows):
        half[start:start + chunk_rows] = table[start:start + chunk_rows].astype(np.float16)
    half.flush()
    tensor = torch.from_file(tmp, shared=False, size=half.size, dtype=torch.float16).view(table.shape)
    with atomic_open(out) as f:
        torch.save(tensor, f)
    os.remove(tmp)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding full/processed/")
    p.add_argument("--types", nargs="*", default=list(NODE_TYPES))
    p.add_argument("--num-papers", type=int, default=IGBHSizes.num_papers)
    p.add_argument("--num-authors", type=int, default=IGBHSizes.num_authors)
    p.add_argument("--feature-dim", type=int, default=IGBHSizes.feature_dim)
    args = p.parse_args(argv)
    sizes = IGBHSizes(num_papers=args.num_papers, num_authors=args.num_authors,
                      labelled_papers=min(IGBHSizes.labelled_papers, args.num_papers), feature_dim=args.feature_dim)
    for node_type in args.types:
        print(convert(processed_dir(args.root), node_type, sizes))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

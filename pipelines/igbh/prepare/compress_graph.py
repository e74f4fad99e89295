"""Write the CSC graph cache (`CSC/<etype>/{indptr.pt, indices.pt}`) from the COO edge files: the graph
structure the rules let a run cache, so that the timed region memory-maps it instead of sorting 5.8 billion
edges. Every edge id is range-checked as it is read (pipelines/igbh/format.py read_edges).

    python -m pipelines.igbh.prepare.compress_graph --root /data/igbh
"""

from __future__ import annotations

import argparse

from pipelines.igbh.format import NODE_TYPES, IGBHSizes, processed_dir, read_features
from pipelines.igbh.graph import build_graph, write_cache


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="folder holding full/processed/")
    p.add_argument("--num-papers", type=int, default=IGBHSizes.num_papers)
    p.add_argument("--num-authors", type=int, default=IGBHSizes.num_authors)
    p.add_argument("--feature-dim", type=int, default=IGBHSizes.feature_dim)
    args = p.parse_args(argv)
    pdir = processed_dir(args.root)
    sizes = IGBHSizes(num_papers=args.num_papers, num_authors=args.num_authors,
                      labelled_papers=min(IGBHSizes.labelled_papers, args.num_papers), feature_dim=args.feature_dim)
    counts = {t: int(read_features(pdir, t, sizes).shape[0]) for t in NODE_TYPES}
    graph = build_graph(pdir, counts)
    write_cache(pdir, graph)
    print("\n".join(f"{'__'.join(e)}: {c.indices.numel()} edges" for e, c in graph.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seeds/s of R-GAT's mini-batch preparation (sampling [15, 10, 5] over the eleven edge types + feature gather
from the memory maps) against a plain per-node reference sampler (Python's random.sample per node and edge
type, dict relabelling: what a straightforward implementation does), both measured here on the same
synthetic IGBH and the same seed batches.

    python perf_tests/gnn_sampler.py [--papers 50000] [--batch 1024] [--batches 5]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time

import torch

from pipelines.igbh.dataset import IGBH
from pipelines.igbh.format import IGBHSizes
from pipelines.igbh.graph import EDGE_TYPES
from pipelines.igbh.loader import build_batch
from pipelines.igbh.sampler import NeighborSampler
from pipelines.igbh.synthetic import write_synthetic_igbh

FANOUTS = (15, 10, 5)


def reference_sample(graph, seeds: list[int], rng: random.Random):
    """Per-node loop: for each frontier node and edge type, random.sample of its incoming edges."""
    nodes = {t: {} for t in {e[0] for e in EDGE_TYPES} | {e[2] for e in EDGE_TYPES}}
    for s in seeds:
        nodes["paper"].setdefault(s, len(nodes["paper"]))
    frontier = {"paper": list(nodes["paper"])}
    edges = {e: [] for e in EDGE_TYPES}
    indptr = {e: graph[e].indptr.tolist() for e in EDGE_TYPES}
    for fanout in FANOUTS:
        nxt = {}
        for etype in EDGE_TYPES:
            src_t, _, dst_t = etype
            for v in frontier.get(dst_t, []):
                lo, hi = indptr[etype][v], indptr[etype][v + 1]
                picks = range(lo, hi) if hi - lo <= fanout else rng.sample(range(lo, hi), fanout)
                for p in picks:
                    u = int(graph[etype].indices[p])
                    if u not in nodes[src_t]:
                        nodes[src_t][u] = len(nodes[src_t])
                        nxt.setdefault(src_t, []).append(u)
                    edges[etype].append((nodes[src_t][u], nodes[dst_t][v]))
        frontier = nxt
    return nodes, edges


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--papers", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--batches", type=int, default=5)
    p.add_argument("--feature-dim", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sizes = IGBHSizes(num_papers=args.papers, num_authors=args.papers, labelled_papers=args.papers,
                      feature_dim=args.feature_dim, num_classes=16)
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic_igbh(tmp, sizes, institutes=200, fos=2000, journals=500, conferences=200,
                             val_fraction=0.01, seed=0)
        data = IGBH(tmp, sizes)
        sampler = NeighborSampler(data.graph, FANOUTS)
        batches = [data.train_idx[i * args.batch:(i + 1) * args.batch] for i in range(args.batches)]
        build_batch(data, sampler, batches[0], args.batch, torch.Generator().manual_seed(0), torch.device("cpu"))
        t = time.perf_counter()
        nodes = 0
        for i, seeds in enumerate(batches):
            b = build_batch(data, sampler, seeds, args.batch, torch.Generator().manual_seed(i), torch.device("cpu"))
            nodes += sum(x.shape[0] for x in b.x.values())
        ours = time.perf_counter() - t
        t = time.perf_counter()
        ref_nodes = 0
        for i, seeds in enumerate(batches):
            held, _ = reference_sample(data.graph, seeds.tolist(), random.Random(i))
            for node_type, ids in held.items():
                ref_nodes += len(ids)
                data.gather(node_type, torch.tensor(list(ids), dtype=torch.int64))
        ref = time.perf_counter() - t
    seeds_total = args.batch * args.batches
    print("| sampler | seeds/s | nodes/batch | s/batch |\n|---|---|---|---|")
    print(f"| vectorised (ours) | {seeds_total / ours:,.0f} | {nodes / args.batches:,.0f} | "
          f"{ours / args.batches:.3f} |")
    print(f"| per-node reference | {seeds_total / ref:,.0f} | {ref_nodes / args.batches:,.0f} | "
          f"{ref / args.batches:.3f} |")
    print(f"speed-up: {ref / ours:.1f}x ({args.papers} papers, batch {args.batch}, fan-out {list(FANOUTS)}, "
          f"1 thread)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Neighbour sampling over the CSC graph, vectorised in torch: the same code on CPU and on a GPU.

From the seed papers, hop h samples up to `fanouts[h]` incoming edges of every node first reached at the
previous hop, for each of the eleven edge types into that node's type, without replacement (PyG's
NeighborLoader order: 15 at the hop next to the seeds, then 10, then 5). The sources reached are added to
their type's node list once (deduplicated against the nodes already there) and form the next frontier, so
each node's incoming edges are sampled at most once and the subgraph holds no duplicate edge.

Without replacement, for all frontier nodes at once:
  degree <= fan-out: every edge (one `repeat_interleave`);
  degree > fan-out:  Floyd's algorithm, one column per draw across all such nodes: draw t uniform in [0, j]
                     for j = degree - fanout + s; take j instead where t is already chosen. After `fanout`
                     draws each row is a uniform random subset, at O(fanout^2) per node whatever its degree.
Relabelling to local ids is a `torch.unique` over the nodes held and the candidates; new nodes keep the order
in which they were first reached. No Python loop runs over nodes, only over hops and edge types.

The result is what PyG's heterogeneous layers take: global ids per node type (seed papers first) and, per
edge type, a (2, E) edge_index of local ids (row 0 sources, row 1 destinations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipelines.igbh.graph import CSC, EDGE_TYPES, EdgeType


@dataclass
class SampledSubgraph:
    nodes: dict[str, torch.Tensor]  # node type -> global ids (int64); "paper" starts with the seeds
    edge_index: dict[EdgeType, torch.Tensor]  # edge type -> (2, E) local (source, destination) ids
    num_seeds: int


def sample_positions(indptr: torch.Tensor, dst: torch.Tensor, fanout: int,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, position): for each sampled edge, the index into `dst` of its destination and its position in
    the CSC's `indices`. fanout < 0 takes every edge."""
    start = indptr[dst]
    degree = indptr[dst + 1] - start
    take_all = degree <= fanout if fanout >= 0 else torch.ones_like(degree, dtype=torch.bool)
    # every edge of the nodes whose degree is within the fan-out
    full = take_all.nonzero().squeeze(1)
    full_degree = degree[full]
    owner_full = torch.repeat_interleave(full, full_degree)
    first = torch.cumsum(full_degree, 0) - full_degree
    offsets = torch.arange(owner_full.numel(), device=dst.device) - torch.repeat_interleave(first, full_degree)
    position_full = start[owner_full] + offsets
    # Floyd's algorithm for the others
    partial = (~take_all).nonzero().squeeze(1)
    if partial.numel() == 0:
        return owner_full, position_full
    d = degree[partial]
    chosen = torch.empty((partial.numel(), fanout), dtype=torch.int64, device=dst.device)
    for s in range(fanout):
        j = d - fanout + s
        u = torch.rand(partial.numel(), generator=generator, dtype=torch.float64, device=dst.device)
        t = torch.minimum((u * (j + 1).to(torch.float64)).to(torch.int64), j)
        if s:
            t = torch.where((chosen[:, :s] == t[:, None]).any(1), j, t)
        chosen[:, s] = t
    owner_partial = partial.repeat_interleave(fanout)
    position_partial = (start[partial, None] + chosen).reshape(-1)
    return torch.cat([owner_full, owner_partial]), torch.cat([position_full, position_partial])


def relabel(held: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(local ids of `candidates`, the candidates not in `held`, once each in order of first appearance).
    `held` (distinct global ids) keeps its local ids 0..len-1; the new nodes follow."""
    n_held = held.numel()
    both = torch.cat([held, candidates])
    unique, inverse = torch.unique(both, return_inverse=True)
    position = torch.arange(both.numel(), device=both.device)
    first = torch.full((unique.numel(),), both.numel(), dtype=torch.int64, device=both.device)
    first.scatter_reduce_(0, inverse, position, reduce="amin")
    new = (first >= n_held).nonzero().squeeze(1)
    new = new[torch.argsort(first[new])]
    local = first.clone()  # a held node's first position is its local id
    local[new] = n_held + torch.arange(new.numel(), device=both.device)
    return local[inverse[n_held:]], unique[new]


class NeighborSampler:
    def __init__(self, graph: dict[EdgeType, CSC], fanouts: list[int] | tuple[int, ...],
                 device: torch.device | None = None):
        missing = [e for e in EDGE_TYPES if e not in graph]
        if missing:
            raise ValueError(f"the graph lacks edge types {missing}")
        if not fanouts or any(f == 0 or f < -1 for f in fanouts):
            raise ValueError(f"fan-outs {fanouts}: want positive counts per hop (-1: every neighbour)")
        self.fanouts = tuple(int(f) for f in fanouts)
        self.device = device = device if device is not None else torch.device("cpu")
        # On a GPU the structure lives in device memory, as NVIDIA samples; on CPU the CSC stays as loaded
        # (memory-mapped from the cache, or built in memory).
        self.graph = {e: CSC(c.indptr.to(device), c.indices.to(device)) for e, c in graph.items()}
        self.node_types = sorted({t for e in EDGE_TYPES for t in (e[0], e[2])})

    def sample(self, seeds: torch.Tensor, generator: torch.Generator | None = None) -> SampledSubgraph:
        seeds = seeds.to(self.device, torch.int64)
        empty = torch.zeros(0, dtype=torch.int64, device=self.device)
        nodes = {t: empty for t in self.node_types}
        nodes["paper"] = seeds
        frontier = {"paper": (seeds, torch.arange(seeds.numel(), device=self.device))}
        edges: dict[EdgeType, list[torch.Tensor]] = {e: [] for e in EDGE_TYPES}
        for fanout in self.fanouts:
            reached: dict[str, list[tuple[EdgeType, torch.Tensor, torch.Tensor]]] = {}
            for etype in EDGE_TYPES:
                src_type, _, dst_type = etype
                if dst_type not in frontier:
                    continue
                dst_global, dst_local = frontier[dst_type]
                csc = self.graph[etype]
                owner, position = sample_positions(csc.indptr, dst_global, fanout, generator)
                reached.setdefault(src_type, []).append((etype, csc.indices[position].to(torch.int64),
                                                         dst_local[owner]))
            frontier = {}
            for node_type, parts in reached.items():
                local, added = relabel(nodes[node_type], torch.cat([src for _, src, _ in parts]))
                held = nodes[node_type].numel()
                nodes[node_type] = torch.cat([nodes[node_type], added])
                if added.numel():
                    frontier[node_type] = (added, held + torch.arange(added.numel(), device=self.device))
                for (etype, _, dst_local), src_local in zip(parts, local.split([p[1].numel() for p in parts])):
                    edges[etype].append(torch.stack([src_local, dst_local]))
            if not frontier:
                break
        edge_index = {e: torch.cat(parts, 1) if parts else torch.zeros((2, 0), dtype=torch.int64, device=self.device)
                      for e, parts in edges.items()}
        return SampledSubgraph(nodes, edge_index, seeds.numel())

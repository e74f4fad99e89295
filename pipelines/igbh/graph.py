"""IGBH's graph as the reference builds it, in CSC per edge type (incoming edges of each destination node).

From the six stored relations the reference makes eleven edge types: `cites` symmetric (each citation in both
directions, duplicates dropped) with one self loop per paper, and a reverse `rev_<rel>` type for each other
relation, so that every node type receives messages. Sampling walks incoming edges, so each type is stored
as CSC: `indptr[v]:indptr[v + 1]` are the positions of destination v's edges in `indices` (their sources).

The CSC arrays are graph structure, which the rules let a run cache: `CSC/<src>__<rel>__<dst>/{indptr.pt,
indices.pt}` (written by pipelines/igbh/prepare/compress_graph.py) load as memory maps instead of being
rebuilt from the COO files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from pipelines.igbh.format import RELATIONS, IGBHFormatError, read_edges, relation_dir
from runtime.atomic_write import atomic_open

EdgeType = tuple[str, str, str]
CSC_DIR = "CSC"


def reverse(relation: EdgeType) -> EdgeType:
    src, rel, dst = relation
    return (dst, f"rev_{rel}", src)


# The eleven edge types: the six relations, then the reverses of the five that are not `cites`.
EDGE_TYPES: tuple[EdgeType, ...] = RELATIONS + tuple(reverse(r) for r in RELATIONS if r[1] != "cites")


def index_dtype(num_nodes: int) -> torch.dtype:
    """int32 indices where the ids fit (half the memory of the 5.8 billion edges), else int64."""
    return torch.int32 if num_nodes < 2**31 else torch.int64


@dataclass
class CSC:
    indptr: torch.Tensor  # (num_dst + 1,) int64
    indices: torch.Tensor  # (num_edges,) source ids, int32 or int64

    @property
    def num_dst(self) -> int:
        return self.indptr.numel() - 1

    def degree(self, nodes: torch.Tensor) -> torch.Tensor:
        return self.indptr[nodes + 1] - self.indptr[nodes]


def csc_from_coo(src: torch.Tensor, dst: torch.Tensor, num_src: int, num_dst: int) -> CSC:
    """Incoming edges grouped by destination, in the COO's order within a destination."""
    order = torch.argsort(dst, stable=True)
    counts = torch.bincount(dst, minlength=num_dst)
    indptr = torch.zeros(num_dst + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    return CSC(indptr, src[order].to(index_dtype(num_src)))


def symmetric_with_self_loops(edges: torch.Tensor, num_nodes: int) -> CSC:
    """`cites` as the reference uses it: both directions, each pair once, one self loop per node."""
    src = torch.cat([edges[0], edges[1], torch.arange(num_nodes)])
    dst = torch.cat([edges[1], edges[0], torch.arange(num_nodes)])
    keys = torch.unique(dst * num_nodes + src)  # sorted by destination, then source; duplicates dropped
    dst, src = keys // num_nodes, keys % num_nodes
    counts = torch.bincount(dst, minlength=num_nodes)
    indptr = torch.zeros(num_nodes + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    return CSC(indptr, src.to(index_dtype(num_nodes)))


def build_graph(pdir: str, num_nodes: dict[str, int]) -> dict[EdgeType, CSC]:
    """All eleven edge types from the stored COO files."""
    graph = {}
    for relation in RELATIONS:
        src_type, _, dst_type = relation
        edges = read_edges(pdir, relation, num_nodes[src_type], num_nodes[dst_type])
        if relation[1] == "cites":
            graph[relation] = symmetric_with_self_loops(edges, num_nodes["paper"])
            continue
        graph[relation] = csc_from_coo(edges[0], edges[1], num_nodes[src_type], num_nodes[dst_type])
        graph[reverse(relation)] = csc_from_coo(edges[1], edges[0], num_nodes[dst_type], num_nodes[src_type])
    return {etype: graph[etype] for etype in EDGE_TYPES}


def cache_paths(pdir: str, etype: EdgeType) -> tuple[str, str]:
    base = os.path.join(pdir, CSC_DIR, relation_dir(etype))
    return os.path.join(base, "indptr.pt"), os.path.join(base, "indices.pt")


def write_cache(pdir: str, graph: dict[EdgeType, CSC]) -> None:
    for etype, csc in graph.items():
        indptr_path, indices_path = cache_paths(pdir, etype)
        os.makedirs(os.path.dirname(indptr_path), exist_ok=True)
        for tensor, path in ((csc.indptr, indptr_path), (csc.indices, indices_path)):
            with atomic_open(path) as f:
                torch.save(tensor.contiguous(), f)


def has_cache(pdir: str) -> bool:
    return all(os.path.isfile(p) for etype in EDGE_TYPES for p in cache_paths(pdir, etype))


def read_cache(pdir: str, num_nodes: dict[str, int]) -> dict[EdgeType, CSC]:
    """The cached CSC arrays, memory-mapped, with their shapes checked against the node counts (the
    converter checked every index when it wrote them)."""
    graph = {}
    for etype in EDGE_TYPES:
        indptr_path, indices_path = cache_paths(pdir, etype)
        indptr = torch.load(indptr_path, weights_only=True, mmap=True)
        indices = torch.load(indices_path, weights_only=True, mmap=True)
        n = num_nodes[etype[2]]
        if not isinstance(indptr, torch.Tensor) or indptr.dtype != torch.int64 or tuple(indptr.shape) != (n + 1,):
            raise IGBHFormatError(f"{indptr_path}: expected an int64 tensor of shape ({n + 1},) "
                                  f"({etype[2]} has {n} nodes)")
        if (not isinstance(indices, torch.Tensor) or indices.ndim != 1
                or indices.dtype not in (torch.int32, torch.int64)):
            raise IGBHFormatError(f"{indices_path}: expected a 1-D int32/int64 tensor")
        if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel():
            raise IGBHFormatError(f"{indptr_path}: spans [{int(indptr[0])}, {int(indptr[-1])}], but "
                                  f"{indices_path} holds {indices.numel()} edges")
        graph[etype] = CSC(indptr, indices)
    return graph


def load_graph(pdir: str, num_nodes: dict[str, int]) -> dict[EdgeType, CSC]:
    """The CSC cache when present, else the graph built from the COO files."""
    return read_cache(pdir, num_nodes) if has_cache(pdir) else build_graph(pdir, num_nodes)

"""The vectorised neighbour sampler against the graph it samples: every sampled edge exists, each node gets
min(degree, fan-out) distinct incoming edges of each type, the subset is uniform (chi-square over many
draws), the same generator seed gives the same subgraph, and nodes are expanded once, at the hop first
reached. The expectations come from the COO edges directly (Python sets), not from the sampler's code."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
from scipy import stats

from pipelines.igbh.graph import EDGE_TYPES, csc_from_coo, symmetric_with_self_loops
from pipelines.igbh.sampler import NeighborSampler, relabel, sample_positions

NUM = {"paper": 60, "author": 40, "institute": 5, "fos": 6, "journal": 4, "conference": 3}


def _random_graph(seed: int = 0):
    """(graph in CSC, {edge type: set of (src, dst)}) with degrees from 0 to well over the fan-outs."""
    g = torch.Generator().manual_seed(seed)
    rel_edges = {}
    for src, rel, dst in [e for e in EDGE_TYPES if not e[1].startswith("rev_")]:
        e = 4 * NUM[src]
        pairs = torch.stack([torch.randint(0, NUM[src], (e,), generator=g),
                             torch.randint(0, NUM[dst], (e,), generator=g)])
        rel_edges[(src, rel, dst)] = pairs.unique(dim=1)  # no parallel edges: a sampled pair names one edge
    graph, truth = {}, {}
    for (src, rel, dst), e in rel_edges.items():
        if rel == "cites":
            pairs = {(int(a), int(b)) for a, b in e.t()} | {(int(b), int(a)) for a, b in e.t()}
            pairs = {p for p in pairs if p[0] != p[1]} | {(i, i) for i in range(NUM["paper"])}
            graph[(src, rel, dst)] = symmetric_with_self_loops(e, NUM["paper"])
            truth[(src, rel, dst)] = pairs
            continue
        graph[(src, rel, dst)] = csc_from_coo(e[0], e[1], NUM[src], NUM[dst])
        graph[(dst, f"rev_{rel}", src)] = csc_from_coo(e[1], e[0], NUM[dst], NUM[src])
        truth[(src, rel, dst)] = [(int(a), int(b)) for a, b in e.t()]
        truth[(dst, f"rev_{rel}", src)] = [(int(b), int(a)) for a, b in e.t()]
    return graph, truth


@pytest.fixture(scope="module")
def graph_and_truth():
    return _random_graph()


def test_cites_is_symmetric_with_one_self_loop_and_no_duplicates(graph_and_truth):
    graph, truth = graph_and_truth
    csc = graph[("paper", "cites", "paper")]
    found = [(int(csc.indices[p]), v) for v in range(NUM["paper"]) for p in range(csc.indptr[v], csc.indptr[v + 1])]
    assert len(found) == len(set(found)) and set(found) == truth[("paper", "cites", "paper")]


def test_every_sampled_edge_exists_counts_are_min_degree_fanout_without_duplicates(graph_and_truth):
    graph, truth = graph_and_truth
    fanouts = [3, 2, 2]
    sampler = NeighborSampler(graph, fanouts)
    seeds = torch.tensor([0, 5, 7, 11, 42])
    sub = sampler.sample(seeds, torch.Generator().manual_seed(1))
    assert torch.equal(sub.nodes["paper"][:5], seeds)
    for t, ids in sub.nodes.items():
        assert ids.unique().numel() == ids.numel(), t  # each node held once
    in_degree = {e: Counter(d for _, d in pairs) for e, pairs in truth.items()}
    expanded_at = {}  # (type, global id) -> hop at which its incoming edges were sampled
    for etype, index in sub.edge_index.items():
        src_t, _, dst_t = etype
        edges = [(int(sub.nodes[src_t][s]), int(sub.nodes[dst_t][d])) for s, d in index.t()]
        assert len(edges) == len(set(edges)), etype  # no duplicate edge
        assert set(edges) <= set(truth[etype]), etype  # every sampled edge exists
        per_dst = Counter(d for _, d in edges)
        for dst, k in per_dst.items():
            expanded_at.setdefault((dst_t, dst), set()).add(etype)
            # a destination's fan-out is that of the hop its type/id was first reached; it is at most the
            # largest fan-out, and it is exactly min(degree, fan-out) for the seeds (hop 0)
            assert k <= min(in_degree[etype][dst], max(fanouts)), (etype, dst)
        if dst_t == "paper":
            for seed in seeds.tolist():
                assert per_dst.get(seed, 0) == min(in_degree[etype][seed], fanouts[0]), (etype, seed)


def _hop_of_nodes(sub, seeds, truth):
    """Breadth-first hop of each held node from the sampled edges (a node's hop = first reached)."""
    hop = {("paper", int(s)): 0 for s in seeds}
    for h in range(3):
        for etype, index in sub.edge_index.items():
            src_t, _, dst_t = etype
            for s, d in index.t().tolist():
                if hop.get((dst_t, int(sub.nodes[dst_t][d]))) == h:
                    hop.setdefault((src_t, int(sub.nodes[src_t][s])), h + 1)
    return hop


def test_counts_follow_the_hop_each_node_was_first_reached(graph_and_truth):
    graph, truth = graph_and_truth
    fanouts = [4, 2, 1]
    sub = NeighborSampler(graph, fanouts).sample(torch.tensor([3, 9]), torch.Generator().manual_seed(5))
    hop = _hop_of_nodes(sub, [3, 9], truth)
    in_degree = {e: Counter(d for _, d in pairs) for e, pairs in truth.items()}
    for etype, index in sub.edge_index.items():
        src_t, _, dst_t = etype
        per_dst = Counter(int(sub.nodes[dst_t][d]) for d in index[1].tolist())
        for dst, k in per_dst.items():
            assert k == min(in_degree[etype][dst], fanouts[hop[(dst_t, dst)]]), (etype, dst)
    # and every held node of hops 0-2 had each of its types' incoming edges sampled (none skipped)
    for (t, node), h in hop.items():
        if h >= len(fanouts):
            continue
        for etype in [e for e in EDGE_TYPES if e[2] == t]:
            local = (sub.nodes[t] == node).nonzero().item()
            got = int((sub.edge_index[etype][1] == local).sum())
            assert got == min(in_degree[etype][node], fanouts[h]), (etype, node)


def test_same_seed_same_subgraph_other_seed_other_subgraph(graph_and_truth):
    graph, _ = graph_and_truth
    sampler = NeighborSampler(graph, [3, 2, 2])
    seeds = torch.tensor([1, 2, 3, 4])
    a, b = (sampler.sample(seeds, torch.Generator().manual_seed(9)) for _ in range(2))
    c = sampler.sample(seeds, torch.Generator().manual_seed(10))
    assert all(torch.equal(a.nodes[t], b.nodes[t]) for t in a.nodes)
    assert all(torch.equal(a.edge_index[e], b.edge_index[e]) for e in a.edge_index)
    assert any(not torch.equal(a.edge_index[e], c.edge_index[e]) for e in a.edge_index)


def test_without_replacement_subsets_are_uniform_chi_square():
    """A node of degree 6 with fan-out 3: all C(6, 3) = 20 subsets equally likely; plus each edge's inclusion
    rate for a degree-40 node at fan-out 5 (1/8 each)."""
    indptr = torch.tensor([0, 6, 46])
    g = torch.Generator().manual_seed(123)
    draws = 8000
    dst = torch.zeros(draws, dtype=torch.int64)  # the same node many times: one vectorised call
    owner, position = sample_positions(indptr, dst, 3, g)
    subsets = Counter(tuple(sorted(position[owner == i].tolist())) for i in range(draws))
    assert set(subsets) == set(itertools.combinations(range(6), 3))
    observed = [subsets[s] for s in itertools.combinations(range(6), 3)]
    assert stats.chisquare(observed).pvalue > 1e-3
    owner, position = sample_positions(indptr, torch.ones(draws, dtype=torch.int64), 5, g)
    counts = torch.bincount(position - 6, minlength=40)
    assert int(counts.sum()) == 5 * draws
    assert stats.chisquare(counts.numpy(), [5 * draws / 40] * 40).pvalue > 1e-3
    per_owner = torch.bincount(owner, minlength=draws)
    assert bool((per_owner == 5).all())


def test_uniformity_in_the_full_sampler_over_many_batches(graph_and_truth):
    """The seed's first-hop `cites` neighbours across independent samples: each of its d neighbours appears
    with rate fanout / d."""
    graph, truth = graph_and_truth
    etype = ("paper", "cites", "paper")
    seed = max(range(NUM["paper"]), key=lambda v: sum(1 for _, d in truth[etype] if d == v))
    neighbours = sorted(s for s, d in truth[etype] if d == seed)
    fanout = 3
    assert len(neighbours) > fanout
    sampler = NeighborSampler(graph, [fanout])
    hits = Counter()
    runs = 3000
    for r in range(runs):
        sub = sampler.sample(torch.tensor([seed]), torch.Generator().manual_seed(r))
        src = sub.edge_index[etype][0]
        hits.update(sub.nodes["paper"][src].tolist())
    observed = [hits[n] for n in neighbours]
    assert sum(observed) == runs * fanout
    assert stats.chisquare(observed).pvalue > 1e-3


def test_relabel_keeps_held_ids_and_appends_new_nodes_in_first_seen_order():
    local, added = relabel(torch.tensor([5, 3, 9]), torch.tensor([3, 7, 7, 1, 9, 8, 1]))
    assert local.tolist() == [1, 3, 3, 4, 2, 5, 4] and added.tolist() == [7, 1, 8]


def test_bad_fanouts_are_refused(graph_and_truth):
    with pytest.raises(ValueError, match="fan-outs"):
        NeighborSampler(graph_and_truth[0], [3, 0])


def test_degree_far_above_fanout_costs_only_the_fanout():
    """Floyd's draws: a node of degree 10^7 samples 5 distinct edges without touching the others."""
    indptr = torch.tensor([0, 10_000_000])
    owner, position = sample_positions(indptr, torch.zeros(1000, dtype=torch.int64), 5,
                                       torch.Generator().manual_seed(0))
    assert position.numel() == 5000 and int(position.max()) < 10_000_000
    rows = position.view(1000, 5)
    assert all(len(set(r)) == 5 for r in rows.tolist())
    assert abs(float(position.double().mean()) / 5e6 - 1) < 0.02 + 3 / math.sqrt(5000)

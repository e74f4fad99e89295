"""R-GAT against full-graph message passing: on a subgraph sampled with every neighbour, the seeds' logits
equal those of the same PyG layers run over the whole graph (every node, every edge); the size of the real
model; the frozen last-layer convolutions are the ones that feed no logit."""

from __future__ import annotations

import pytest
import torch

from models.gnn.model import RGNN, RGNNConfig, build_rgnn
from pipelines.igbh.dataset import IGBH
from pipelines.igbh.format import IGBHSizes
from pipelines.igbh.graph import EDGE_TYPES
from pipelines.igbh.loader import build_batch
from pipelines.igbh.sampler import NeighborSampler
from pipelines.igbh.synthetic import write_synthetic_igbh

SIZES = IGBHSizes(num_papers=300, num_authors=200, labelled_papers=200, feature_dim=16, num_classes=5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("igbh_small")
    write_synthetic_igbh(str(root), SIZES, institutes=6, fos=8, journals=5, conferences=4, val_fraction=0.1, seed=3)
    return IGBH(str(root), SIZES)


def _full_graph_inputs(dataset):
    x = {t: torch.from_numpy(dataset.features[t][:].copy()) for t in dataset.features}
    edges = {}
    for etype, csc in dataset.graph.items():
        dst = torch.repeat_interleave(torch.arange(csc.num_dst), csc.indptr[1:] - csc.indptr[:-1])
        edges[etype] = torch.stack([csc.indices.long(), dst])
    return x, edges


def test_full_neighbour_subgraph_gives_the_full_graph_logits(dataset):
    torch.manual_seed(0)
    model = build_rgnn(RGNNConfig(in_channels=16, hidden_channels=16, num_heads=4, num_layers=3, num_classes=5))
    model.eval()
    seeds = dataset.train_idx[:24]
    sampler = NeighborSampler(dataset.graph, [-1, -1, -1])
    batch = build_batch(dataset, sampler, seeds, seeds.numel(), torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(batch.y, dataset.labels_of(seeds))
    with torch.no_grad():
        sub = model(batch.x, batch.edge_index, batch.num_seeds)
        x, edges = _full_graph_inputs(dataset)
        # the same layers over the whole graph: HeteroConv per layer, activation and dropout (off), then lin
        h = x
        for layer, conv in enumerate(model.convs):
            h = conv(h, edges)
            if layer < len(model.convs) - 1:
                h = {t: torch.nn.functional.leaky_relu(v) for t, v in h.items()}
        full = model.lin(h["paper"])[seeds]
    assert sub.shape == (24, 5)
    torch.testing.assert_close(sub, full, rtol=1e-5, atol=1e-5)
    # and a fan-out-limited subgraph does not (it is a sample, not the full neighbourhood)
    few = build_batch(dataset, NeighborSampler(dataset.graph, [1, 1, 1]), seeds, seeds.numel(),
                      torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        assert not torch.allclose(model(few.x, few.edge_index, few.num_seeds), full, atol=1e-4)


def test_reference_size_and_frozen_last_layer():
    model = build_rgnn(RGNNConfig())
    total = sum(p.numel() for p in model.parameters())
    # per layer and edge type: Linear(in, 512, no bias) + att_src + att_dst (4 x 128) + bias 512
    per_conv = [1024 * 512 + 3 * 512, 512 * 512 + 3 * 512, 512 * 512 + 3 * 512]
    assert total == 11 * sum(per_conv) + 512 * 2983 + 2983  # 13,115,303: the spec's ~13M
    frozen = {tuple(n.split(".")[:4]) for n, p in model.named_parameters() if not p.requires_grad}
    # last layer: the six convolutions into author, institute, fos, journal, conference (written_by and
    # rev_affiliated_to into author); the layer below: author -> institute, whose output only feeds those
    last = {("convs", "2", "convs", f"<{'___'.join(e)}>") for e in EDGE_TYPES if e[2] != "paper"}
    below = {("convs", "1", "convs", "<author___affiliated_to___institute>")}
    assert frozen == last | below and len(last) == 6


def test_frozen_convolutions_get_no_gradient_in_the_unfrozen_model_either(dataset):
    """Why freezing is exact: with every parameter trainable, the last layer's convolutions into other types
    than paper receive no gradient from the paper logits."""
    torch.manual_seed(1)
    cfg = RGNNConfig(in_channels=16, hidden_channels=16, num_heads=4, num_layers=3, num_classes=5, dropout=0.0)
    model = RGNN(cfg, EDGE_TYPES)
    model.requires_grad_(True)
    model.layer_edge_types = [list(EDGE_TYPES)] * 3  # compute every type, as the reference does
    seeds = dataset.train_idx[:8]
    batch = build_batch(dataset, NeighborSampler(dataset.graph, [3, 2, 2]), seeds, 8, torch.Generator().manual_seed(0),
                        torch.device("cpu"))
    model(batch.x, batch.edge_index, 8).sum().backward()
    reference = RGNN(cfg, EDGE_TYPES)
    for layer in range(3):
        for etype in EDGE_TYPES:
            grads = [p.grad for p in model.convs[layer].convs[etype].parameters()]
            if all(p.requires_grad for p in reference.convs[layer].convs[etype].parameters()):
                # (attention over a single incoming edge, e.g. an author's one institute, has a zero gradient)
                assert all(g is not None for g in grads) and any(g.any() for g in grads), (layer, etype)
            else:
                assert all(g is None or not g.any() for g in grads), (layer, etype)

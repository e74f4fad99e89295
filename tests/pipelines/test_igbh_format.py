"""The IGBH layout reader: raw memmaps of exactly their declared size, regular .npy never unpickled, edges
checked against their node types, labels float32 -> int64 and checked; the graph as the reference builds
it (also from the CSC cache); the seed-42 split against the reference's recipe; features gathered from
the memory maps without reading whole tables."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from pipelines.igbh import format as fmt
from pipelines.igbh.dataset import IGBH
from pipelines.igbh.format import IGBHFormatError, IGBHSizes
from pipelines.igbh.graph import EDGE_TYPES, build_graph, has_cache, read_cache
from pipelines.igbh.split import split_seeds, split_sizes
from pipelines.igbh.synthetic import write_synthetic_igbh

SIZES = IGBHSizes(num_papers=120, num_authors=90, labelled_papers=80, feature_dim=8, num_classes=4)


def _write(root, **kw) -> str:
    return write_synthetic_igbh(str(root), SIZES, institutes=5, fos=6, journals=4, conferences=3, val_fraction=0.1,
                                seed=11, **kw)


@pytest.fixture()
def pdir(tmp_path):
    return _write(tmp_path / "igbh")


def test_split_is_the_reference_recipe():
    """split_seeds.py: torch.manual_seed(42); randperm(n); first int(0.6 n) train, next int(0.005 n) val."""
    n = 20_000
    torch.manual_seed(42)
    shuffled = torch.randperm(n)
    train, val = split_seeds(n)
    assert torch.equal(train, shuffled[:12_000]) and torch.equal(val, shuffled[12_000:12_100])
    assert split_sizes(157_675_969) == (94_605_581, 788_379)  # the spec's IGBH-Full counts


def test_dataset_opens_as_memory_maps_and_gathers_rows(pdir):
    data = IGBH(os.path.dirname(os.path.dirname(pdir)), SIZES)
    assert isinstance(data.features["paper"], np.memmap) and isinstance(data.features["author"], np.memmap)
    assert isinstance(data.features["fos"], np.memmap)  # regular .npy, mmap_mode='r'
    raw = np.fromfile(os.path.join(pdir, "paper", "node_feat.npy"), dtype=np.float32).reshape(120, 8)
    ids = torch.tensor([7, 3, 119, 0])
    assert torch.equal(data.gather("paper", ids), torch.from_numpy(raw[[7, 3, 119, 0]]))
    labels = np.fromfile(os.path.join(pdir, "paper", "node_label_2K.npy"), dtype=np.float32)
    got = data.labels_of(torch.tensor([1, 2, 79]))
    assert got.dtype == torch.int64 and got.tolist() == [int(labels[1]), int(labels[2]), int(labels[79])]
    assert data.num_nodes == {"paper": 120, "author": 90, "institute": 5, "fos": 6, "journal": 4, "conference": 3}
    assert data.train_idx.numel() == 48 and data.val_idx.numel() == 8


def test_graph_is_built_as_the_reference_does_and_the_cache_equals_it(pdir):
    counts = {"paper": 120, "author": 90, "institute": 5, "fos": 6, "journal": 4, "conference": 3}
    assert has_cache(pdir)
    built, cached = build_graph(pdir, counts), read_cache(pdir, counts)
    assert list(built) == list(EDGE_TYPES) and len(EDGE_TYPES) == 11
    for etype in EDGE_TYPES:
        assert torch.equal(built[etype].indptr, cached[etype].indptr), etype
        assert torch.equal(built[etype].indices, cached[etype].indices), etype
    coo = np.load(os.path.join(pdir, "paper__written_by__author", "edge_index.npy"))
    rev = built[("author", "rev_written_by", "paper")]
    fwd = built[("paper", "written_by", "author")]
    for csc, dst_col in ((fwd, 1), (rev, 0)):  # forward: author's incoming papers; reverse: paper's authors
        pairs = sorted((int(csc.indices[p]), v) for v in range(csc.num_dst)
                       for p in range(csc.indptr[v], csc.indptr[v + 1]))
        assert pairs == sorted((int(e[1 - dst_col]), int(e[dst_col])) for e in coo)
    cites = np.load(os.path.join(pdir, "paper__cites__paper", "edge_index.npy"))
    want = {(int(a), int(b)) for a, b in cites} | {(int(b), int(a)) for a, b in cites}
    want = {p for p in want if p[0] != p[1]} | {(i, i) for i in range(120)}
    c = built[("paper", "cites", "paper")]
    got = [(int(c.indices[p]), v) for v in range(120) for p in range(c.indptr[v], c.indptr[v + 1])]
    assert len(got) == len(set(got)) and set(got) == want


@pytest.mark.parametrize("delta, word", [(-4, "truncated"), (4, "longer than declared")])
def test_raw_table_of_the_wrong_size_is_refused(pdir, delta, word):
    path = os.path.join(pdir, "author", "node_feat.npy")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:delta] if delta < 0 else data + b"\0" * delta)
    with pytest.raises(IGBHFormatError, match=rf"author/node_feat.npy: \d+ bytes, {word}: a raw float32 array of "
                                              r"shape \(90, 8\) is 2880 bytes"):
        IGBH(pdir, SIZES)


def test_npy_header_on_a_raw_table_is_refused(pdir):
    path = os.path.join(pdir, "paper", "node_feat.npy")
    np.save(path, np.zeros((120, 8), np.float32))  # 128 header bytes more than the raw layout
    with pytest.raises(IGBHFormatError, match="paper/node_feat.npy: 3968 bytes, longer than declared"):
        IGBH(pdir, SIZES)


def test_edge_out_of_range_is_refused(pdir):
    path = os.path.join(pdir, "paper__topic__fos", "edge_index.npy")
    coo = np.load(path)
    coo[5, 1] = 6  # fos has 6 nodes: ids 0..5
    np.save(path, coo)
    shutil.rmtree(os.path.join(pdir, "CSC"))
    with pytest.raises(IGBHFormatError, match=r"paper__topic__fos/edge_index.npy: edge 5 has fos id 6, outside "
                                              r"\[0, 6\) \(fos has 6 nodes\)"):
        IGBH(pdir, SIZES)


def test_edges_of_the_wrong_shape_or_a_pickle_are_refused(pdir):
    shutil.rmtree(os.path.join(pdir, "CSC"))
    path = os.path.join(pdir, "paper__venue__conference", "edge_index.npy")
    np.save(path, np.zeros((3, 120), np.int64))
    with pytest.raises(IGBHFormatError, match=r"edge_index.npy: shape \(3, 120\), expected \(n, 2\)"):
        IGBH(pdir, SIZES)
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IGBHFormatError, match="not a readable .npy array"):
        IGBH(pdir, SIZES)
    np.save(path, np.zeros((5, 2), np.float32))
    with pytest.raises(IGBHFormatError, match="dtype float32, expected kind 'iu'"):
        IGBH(pdir, SIZES)


def test_truncated_regular_npy_is_refused(pdir):
    path = os.path.join(pdir, "journal", "node_feat.npy")
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-10])
    with pytest.raises(IGBHFormatError, match="journal/node_feat.npy: not a readable .npy array"):
        IGBH(pdir, SIZES)


def test_missing_split_and_bad_labels_are_named(pdir):
    data = IGBH(pdir, SIZES)
    labels = np.memmap(os.path.join(pdir, "paper", "node_label_2K.npy"), dtype=np.float32, mode="r+", shape=(120,))
    labels[4], labels[9] = 2.5, 7.0
    labels.flush()
    with pytest.raises(IGBHFormatError, match=r"node_label_2K.npy: paper 4 has label 2.5, not a class id in \[0, 4\)"):
        data.labels_of(torch.tensor([3, 4]))
    with pytest.raises(IGBHFormatError, match="paper 9 has label 7.0"):
        data.labels_of(torch.tensor([9]))
    os.remove(os.path.join(pdir, fmt.VAL_IDX))
    with pytest.raises(IGBHFormatError, match="val_idx.pt: missing; write the split"):
        IGBH(pdir, SIZES)


def test_cache_of_the_wrong_shape_is_refused(pdir):
    path = os.path.join(pdir, "CSC", "paper__topic__fos", "indptr.pt")
    torch.save(torch.zeros(3, dtype=torch.int64), path)
    with pytest.raises(IGBHFormatError, match=r"indptr.pt: expected an int64 tensor of shape \(7,\)"):
        IGBH(pdir, SIZES)


def test_missing_file_is_named(pdir):
    os.remove(os.path.join(pdir, "conference", "node_feat.npy"))
    with pytest.raises(IGBHFormatError, match="conference/node_feat.npy: missing"):
        IGBH(pdir, SIZES)

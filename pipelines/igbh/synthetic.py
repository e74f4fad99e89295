"""A small synthetic IGBH in the exact on-disk layout of IGBH-Full (pipelines/igbh/format.py), whose labels
depend on the features and on the neighbourhoods, so that a graph model beats a per-node one.

Every node has a latent class; a class has a unit centroid in feature space. A paper's own features carry
its class only faintly (centroid x `paper_signal` under unit noise); its authors, fields of study, journal,
conference and most of the papers it cites share its class with high probability and carry their centroid
more clearly, so the class is read from the neighbourhood: attention learns which incoming edge types and
which neighbours agree. `label_noise` of the labels are replaced by a random class, which keeps the best
reachable accuracy below 1 (the checker wants eval_accuracy < 1.0). Institutes carry no signal.

Papers and authors are written as raw float32 tables, labels as raw float32, the rest with `np.save`;
edges as (E, 2) int64 COO; then the seed-42 split and, optionally, the CSC graph cache.
"""

from __future__ import annotations

import os

import numpy as np

from pipelines.igbh.format import LABEL_FILE, IGBHSizes, relation_dir
from pipelines.igbh.split import write_split


def _pick(rng, classes_of_targets: np.ndarray, wanted: np.ndarray, same_class: float) -> np.ndarray:
    """One target per entry of `wanted` (a class): of that class with probability `same_class`, else any."""
    n_targets = classes_of_targets.size
    by_class = [np.flatnonzero(classes_of_targets == c) for c in range(int(classes_of_targets.max()) + 1)]
    out = rng.integers(0, n_targets, wanted.size)
    keep = rng.random(wanted.size) < same_class
    for c, members in enumerate(by_class):
        rows = np.flatnonzero(keep & (wanted == c))
        if members.size and rows.size:
            out[rows] = members[rng.integers(0, members.size, rows.size)]
    return out


def write_synthetic_igbh(out_dir: str, sizes: IGBHSizes, *, institutes: int, fos: int, journals: int,
                         conferences: int, val_fraction: float, seed: int, cites_per_paper: int = 3,
                         paper_signal: float = 0.5, neighbour_signal: float = 1.5, same_class: float = 0.8,
                         label_noise: float = 0.08, write_csc_cache: bool = True) -> str:
    rng = np.random.default_rng(seed)
    pdir = os.path.join(out_dir, "full", "processed")
    c, d = sizes.num_classes, sizes.feature_dim
    counts = {"paper": sizes.num_papers, "author": sizes.num_authors, "institute": institutes, "fos": fos,
              "journal": journals, "conference": conferences}
    centroids = rng.standard_normal((c, d))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    centroids *= np.sqrt(d)  # unit-variance noise per feature: signal and noise on the same scale
    klass = {t: rng.integers(0, c, n) for t, n in counts.items()}
    for node_type, n in counts.items():
        os.makedirs(os.path.join(pdir, node_type), exist_ok=True)
        signal = paper_signal if node_type == "paper" else 0.0 if node_type == "institute" else neighbour_signal
        feats = (signal / np.sqrt(d) * centroids[klass[node_type]] + rng.standard_normal((n, d))).astype(np.float32)
        path = os.path.join(pdir, node_type, "node_feat.npy")
        if node_type in ("paper", "author"):
            feats.tofile(path)  # raw, as IGBH-Full's two large tables
        else:
            np.save(path, feats, allow_pickle=False)

    labels = klass["paper"].astype(np.float32)
    noisy = rng.random(labels.size) < label_noise
    labels[noisy] = rng.integers(0, c, int(noisy.sum()))
    labels[sizes.labelled_papers:] = -1.0  # unlabelled papers: never seeds
    labels.tofile(os.path.join(pdir, LABEL_FILE))

    papers = np.arange(sizes.num_papers)
    edges = {}
    citing = np.repeat(papers, cites_per_paper)
    edges[("paper", "cites", "paper")] = (citing, _pick(rng, klass["paper"], klass["paper"][citing], same_class))
    n_auth = rng.integers(1, 4, sizes.num_papers)
    writer = np.repeat(papers, n_auth)
    edges[("paper", "written_by", "author")] = (writer, _pick(rng, klass["author"], klass["paper"][writer],
                                                              same_class))
    authors = np.arange(sizes.num_authors)
    edges[("author", "affiliated_to", "institute")] = (authors, rng.integers(0, institutes, sizes.num_authors))
    n_fos = rng.integers(1, 3, sizes.num_papers)
    topical = np.repeat(papers, n_fos)
    edges[("paper", "topic", "fos")] = (topical, _pick(rng, klass["fos"], klass["paper"][topical], same_class))
    edges[("paper", "published", "journal")] = (papers, _pick(rng, klass["journal"], klass["paper"], same_class))
    edges[("paper", "venue", "conference")] = (papers, _pick(rng, klass["conference"], klass["paper"], same_class))
    for relation, (src, dst) in edges.items():
        os.makedirs(os.path.join(pdir, relation_dir(relation)), exist_ok=True)
        np.save(os.path.join(pdir, relation_dir(relation), "edge_index.npy"),
                np.stack([src, dst], axis=1).astype(np.int64), allow_pickle=False)

    write_split(pdir, sizes.labelled_papers, val_fraction=val_fraction)
    if write_csc_cache:
        from pipelines.igbh.graph import build_graph, write_cache

        write_cache(pdir, build_graph(pdir, counts))
    return pdir

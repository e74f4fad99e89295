"""The IGBH-Full layout the reference trains on, read (and checked) one file at a time.

`<root>/full/processed/` holds one folder per node type and per relation:

    paper/node_feat.npy          raw float32 (no .npy header), shape (num papers, 1024) given in code
    paper/node_label_2K.npy      raw float32, one class id per paper (cast to int64); 2,983 classes
    author/node_feat.npy         raw float32, shape (num authors, 1024) given in code
    <other type>/node_feat.npy   regular .npy, (n, 1024) float32
    <src>__<rel>__<dst>/edge_index.npy   regular .npy, (E, 2) integer COO (source, destination)
    train_idx.pt, val_idx.pt     the seed-42 split of the labelled papers (pipelines/igbh/split.py)
    CSC/<etype>/{indptr.pt, indices.pt}   optional graph cache (pipelines/igbh/prepare/compress_graph.py)
    <type>/node_feat_fp16.pt     optional fp16 features (pipelines/igbh/prepare/convert_fp16.py)

The two large feature tables and the labels are raw dumps whose shapes only the code knows: a file of
any other byte size is refused (a truncated download, or an .npy with a header where a raw file is due),
never read short. Every regular `.npy` is opened with `allow_pickle=False` and memory-mapped; every `.pt`
with `weights_only=True`. Each error names the file and what is wrong with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

FEATURE_DIM = 1024
NUM_CLASSES = 2983
# Node counts of IGBH-Full (the reference's dataset.py); papers and authors are the raw tables.
FULL_NUM_NODES = {"paper": 269_346_174, "author": 277_220_883, "institute": 26_918, "fos": 712_960,
                  "journal": 49_052, "conference": 4_547}
FULL_LABELLED_PAPERS = 157_675_969  # the papers with a 2K label: ids [0, this)
NODE_TYPES = ("paper", "author", "institute", "fos", "journal", "conference")
RAW_FEATURE_TYPES = ("paper", "author")  # raw memmaps; the others are regular .npy
LABEL_FILE = "paper/node_label_2K.npy"
# The six stored relations (source type, relation, destination type).
RELATIONS = (("paper", "cites", "paper"), ("paper", "written_by", "author"),
             ("author", "affiliated_to", "institute"), ("paper", "topic", "fos"),
             ("paper", "published", "journal"), ("paper", "venue", "conference"))
TRAIN_IDX, VAL_IDX = "train_idx.pt", "val_idx.pt"


class IGBHFormatError(ValueError):
    """A dataset file that cannot be used as it is; the message names the file."""


def processed_dir(root: str) -> str:
    """`<root>/full/processed`, or `root` itself when it already is such a folder."""
    nested = os.path.join(root, "full", "processed")
    return nested if os.path.isdir(nested) else root


def relation_dir(relation: tuple[str, str, str]) -> str:
    return "__".join(relation)


@dataclass(frozen=True)
class IGBHSizes:
    """What the code must know of a dataset before it can read it: the node counts of the raw tables,
    the labelled-paper range and the feature width."""

    num_papers: int = FULL_NUM_NODES["paper"]
    num_authors: int = FULL_NUM_NODES["author"]
    labelled_papers: int = FULL_LABELLED_PAPERS
    feature_dim: int = FEATURE_DIM
    num_classes: int = NUM_CLASSES

    def __post_init__(self):
        if not 0 < self.labelled_papers <= self.num_papers:
            raise ValueError(f"labelled_papers={self.labelled_papers} must be in (0, num_papers={self.num_papers}]")


def _require(path: str) -> None:
    if not os.path.isfile(path):
        raise IGBHFormatError(f"{path}: missing (see pipelines/igbh/prepare/download_igbh_full.sh)")


def open_raw(path: str, dtype, shape: tuple[int, ...]) -> np.memmap:
    """A headerless array of the given shape, memory-mapped read-only; the file must be exactly that size."""
    _require(path)
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    found = os.path.getsize(path)
    if found != expected:
        kind = "truncated" if found < expected else "longer than declared"
        raise IGBHFormatError(f"{path}: {found} bytes, {kind}: a raw {np.dtype(dtype).name} array of shape "
                              f"{shape} is {expected} bytes")
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


def load_npy(path: str, *, dtype_kind: str, ndim: int, columns: int | None = None) -> np.ndarray:
    """A regular .npy, memory-mapped (never unpickled), checked for dtype kind ('f', 'i'), rank and width."""
    _require(path)
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except ValueError as e:  # a pickled object array, a bad header, or data shorter than the header says
        raise IGBHFormatError(f"{path}: not a readable .npy array ({e})") from None
    if array.dtype.kind not in dtype_kind:
        raise IGBHFormatError(f"{path}: dtype {array.dtype}, expected kind {dtype_kind!r}")
    if array.ndim != ndim or (columns is not None and array.shape[1] != columns):
        want = f"(n, {columns})" if columns is not None else f"{ndim} dimensions"
        raise IGBHFormatError(f"{path}: shape {array.shape}, expected {want}")
    return array


def read_features(pdir: str, node_type: str, sizes: IGBHSizes, num_nodes: int | None = None) -> np.ndarray:
    """The feature table of one node type (float32, memory-mapped; rows read only when gathered)."""
    path = os.path.join(pdir, node_type, "node_feat.npy")
    if node_type in RAW_FEATURE_TYPES:
        n = sizes.num_papers if node_type == "paper" else sizes.num_authors
        return open_raw(path, np.float32, (n, sizes.feature_dim))
    array = load_npy(path, dtype_kind="f", ndim=2, columns=sizes.feature_dim)
    if num_nodes is not None and array.shape[0] != num_nodes:
        raise IGBHFormatError(f"{path}: {array.shape[0]} rows, expected {num_nodes}")
    return array


def read_fp16_features(pdir: str, node_type: str, rows: int, sizes: IGBHSizes) -> torch.Tensor:
    """The offline fp16 copy of a feature table (`<type>/node_feat_fp16.pt`), memory-mapped."""
    path = os.path.join(pdir, node_type, "node_feat_fp16.pt")
    _require(path)
    t = torch.load(path, weights_only=True, mmap=True)
    if not isinstance(t, torch.Tensor) or t.dtype != torch.float16 or tuple(t.shape) != (rows, sizes.feature_dim):
        got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise IGBHFormatError(f"{path}: {got}, expected a float16 tensor of shape {(rows, sizes.feature_dim)}")
    return t


def read_labels(pdir: str, sizes: IGBHSizes) -> np.memmap:
    """The 2K labels, raw float32 (cast to int64 where gathered, pipelines/igbh/dataset.py)."""
    return open_raw(os.path.join(pdir, LABEL_FILE), np.float32, (sizes.num_papers,))


def read_edges(pdir: str, relation: tuple[str, str, str], num_src: int, num_dst: int,
               chunk: int = 1 << 24) -> torch.Tensor:
    """One relation's (E, 2) COO as a (2, E) int64 tensor (source row, destination row), every id checked
    to lie inside its node type (in chunks, so a huge file is never loaded twice)."""
    path = os.path.join(pdir, relation_dir(relation), "edge_index.npy")
    coo = load_npy(path, dtype_kind="iu", ndim=2, columns=2)
    out = torch.empty((2, coo.shape[0]), dtype=torch.int64)
    for start in range(0, coo.shape[0], chunk):
        part = torch.from_numpy(np.array(coo[start:start + chunk], dtype=np.int64)).t()  # a private copy
        for side, limit, name in ((0, num_src, relation[0]), (1, num_dst, relation[2])):
            if part.shape[1] and (int(part[side].min()) < 0 or int(part[side].max()) >= limit):
                bad = int(((part[side] < 0) | (part[side] >= limit)).nonzero()[0, 0]) + start
                raise IGBHFormatError(f"{path}: edge {bad} has {name} id {int(coo[bad, side])}, outside "
                                      f"[0, {limit}) ({name} has {limit} nodes)")
        out[:, start:start + part.shape[1]] = part
    return out


def read_index(pdir: str, name: str, labelled_papers: int) -> torch.Tensor:
    """train_idx.pt / val_idx.pt: a 1-D integer tensor of labelled paper ids."""
    path = os.path.join(pdir, name)
    if not os.path.isfile(path):
        raise IGBHFormatError(f"{path}: missing; write the split with python -m pipelines.igbh.prepare.split_seeds")
    t = torch.load(path, weights_only=True)
    if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.dtype.is_floating_point:
        got = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise IGBHFormatError(f"{path}: {got}, expected a 1-D integer tensor of paper ids")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= labelled_papers):
        raise IGBHFormatError(f"{path}: ids outside the labelled papers [0, {labelled_papers})")
    return t.to(torch.int64)

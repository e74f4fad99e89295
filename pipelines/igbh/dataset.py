"""An opened IGBH dataset: memory-mapped feature tables and labels, the eleven-type CSC graph and the split.

Opening reads no feature row: the tables stay memory maps (2.2 TB for IGBH-Full) and a batch gathers only
its nodes' rows (`gather`), in ascending id order so that the reads walk the file forwards. Labels are
the raw float32 table, cast to int64 for the seeds of a batch and checked there (an integral class id in
[0, num_classes), else an error naming the file and the paper).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pipelines.igbh import format as fmt
from pipelines.igbh.format import IGBHFormatError, IGBHSizes
from pipelines.igbh.graph import CSC, EdgeType, load_graph


class IGBH:
    def __init__(self, root: str, sizes: IGBHSizes, *, fp16_features: bool = False):
        self.pdir = fmt.processed_dir(root)
        self.sizes = sizes
        tables = {t: fmt.read_features(self.pdir, t, sizes) for t in fmt.NODE_TYPES}
        self.num_nodes = {t: int(tables[t].shape[0]) for t in fmt.NODE_TYPES}
        if fp16_features:  # the offline fp16 copies replace the float32 tables
            tables = {t: fmt.read_fp16_features(self.pdir, t, self.num_nodes[t], sizes) for t in fmt.NODE_TYPES}
        self.features = tables
        self.labels = fmt.read_labels(self.pdir, sizes)
        self.graph: dict[EdgeType, CSC] = load_graph(self.pdir, self.num_nodes)
        self.train_idx = fmt.read_index(self.pdir, fmt.TRAIN_IDX, sizes.labelled_papers)
        self.val_idx = fmt.read_index(self.pdir, fmt.VAL_IDX, sizes.labelled_papers)

    def gather(self, node_type: str, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (int64, CPU) of one feature table, as a new tensor in the order of `ids`."""
        table = self.features[node_type]
        if ids.numel() == 0:
            return torch.zeros((0, self.sizes.feature_dim),
                               dtype=table.dtype if isinstance(table, torch.Tensor) else torch.float32)
        ordered, where = torch.sort(ids)
        if isinstance(table, torch.Tensor):
            rows = table.index_select(0, ordered)
        else:
            rows = torch.from_numpy(np.asarray(table[ordered.numpy()]))
        out = torch.empty_like(rows)
        out[where] = rows
        return out

    def labels_of(self, papers: torch.Tensor) -> torch.Tensor:
        raw = np.asarray(self.labels[papers.numpy()])
        labels = raw.astype(np.int64)
        bad = (labels != raw) | (labels < 0) | (labels >= self.sizes.num_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise IGBHFormatError(f"{os.path.join(self.pdir, fmt.LABEL_FILE)}: paper {int(papers[i])} has label "
                                  f"{raw[i]}, not a class id in [0, {self.sizes.num_classes})")
        return torch.from_numpy(labels)

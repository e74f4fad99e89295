"""R-GAT (the reference's RGNN with model='rgat'): heterogeneous graph attention over IGBH's eleven edge types.

Each layer is a torch-geometric `HeteroConv` holding one `GATConv(in, hidden / heads, heads)` per edge type,
its heads concatenated to `hidden`, without added self loops (the graph's `cites` carries them), the
outputs summed over the edge types into each destination type. Between layers: leaky ReLU and dropout.
A linear layer maps the seed papers' last hidden state to the classes. Plain PyTorch + PyG: no process
groups here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RGNNConfig:
    in_channels: int = 1024
    hidden_channels: int = 512
    num_heads: int = 4
    num_layers: int = 3
    num_classes: int = 2983
    dropout: float = 0.2


class RGNN(nn.Module):
    def __init__(self, cfg: RGNNConfig, edge_types):
        super().__init__()
        from torch_geometric.nn import GATConv, HeteroConv

        if cfg.hidden_channels % cfg.num_heads:
            raise ValueError(f"model.hidden_channels={cfg.hidden_channels} is not divisible by "
                             f"model.num_heads={cfg.num_heads}")
        self.cfg = cfg
        self.convs = nn.ModuleList()
        for layer in range(cfg.num_layers):
            width = cfg.in_channels if layer == 0 else cfg.hidden_channels
            self.convs.append(HeteroConv({
                etype: GATConv(width, cfg.hidden_channels // cfg.num_heads, heads=cfg.num_heads,
                               add_self_loops=False)
                for etype in edge_types}, aggr="sum"))
        self.lin = nn.Linear(cfg.hidden_channels, cfg.num_classes)
        # Convolutions whose output reaches no paper logit: in the last layer those into other types than
        # `paper`, one layer down those into types that send no edge to `paper` (institutes). The reference keeps
        # them (they never get a gradient and stay at their initial values) and so does this state dict, but
        # they are frozen and skipped, so that DDP needs no unused-parameter search and no work is wasted.
        self.layer_edge_types = []
        needed = {"paper"}
        for conv in reversed(self.convs):
            used = [e for e in edge_types if e[2] in needed]
            for etype in edge_types:
                if etype not in used:
                    conv.convs[etype].requires_grad_(False)
            self.layer_edge_types.insert(0, used)
            needed = {e[0] for e in used}

    def forward(self, x_dict: dict, edge_index_dict: dict, num_seeds: int | None = None) -> torch.Tensor:
        """Logits of the first `num_seeds` papers (all papers if None)."""
        last = len(self.convs) - 1
        for layer, conv in enumerate(self.convs):
            x_dict = conv(x_dict, {e: edge_index_dict[e] for e in self.layer_edge_types[layer]})
            if layer < last:
                x_dict = {t: F.dropout(F.leaky_relu(x), p=self.cfg.dropout, training=self.training)
                          for t, x in x_dict.items()}
        papers = x_dict["paper"]
        return self.lin(papers if num_seeds is None else papers[:num_seeds])


def build_rgnn(cfg: RGNNConfig) -> RGNN:
    from pipelines.igbh.graph import EDGE_TYPES

    return RGNN(cfg, EDGE_TYPES)

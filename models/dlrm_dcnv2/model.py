"""DLRM with a DCN-v2 interaction (MLPerf DLRMv2), written for one device.

    dense (B, 13) -> bottom MLP (ReLU after every layer) -> (B, D)
    26 sum-pooled multi-hot bags (torchrec EmbeddingBagCollection) -> (B, 26 * D)
    concat -> x0 (B, 27 * D) -> 3 low-rank cross layers: x <- x0 * (W (V x) + b) + x
    -> top MLP (ReLU between layers, none after the last) -> logit (B,)

Sharding the tables across ranks and wrapping the MLPs in DDP is `parallelize.py`'s job; this file knows no
process group. The embedding tables can be built on the `meta` device (the full model has 26.1B embedding
parameters) while the MLPs live on the compute device.

Initialisation follows torchrec's DLRM_DCN (the reference): nn.Linear defaults for the MLPs, Xavier-normal
cross kernels with zero bias, uniform(+-1/sqrt(rows)) embedding rows (EmbeddingBagConfig's default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from pipelines.criteo.format import MULTI_HOT_SIZES, NUM_DENSE, TABLE_ROWS, sparse_feature_names


@dataclass
class DLRMModelConfig:
    embedding_dim: int = 128
    table_rows: tuple[int, ...] = TABLE_ROWS
    multi_hot_sizes: tuple[int, ...] = MULTI_HOT_SIZES  # ids per bag; the planner's pooling factors
    bottom_mlp: tuple[int, ...] = (512, 256, 128)  # the last equals embedding_dim
    top_mlp: tuple[int, ...] = (1024, 1024, 512, 256, 1)
    dcn_layers: int = 3
    dcn_low_rank: int = 512

    def __post_init__(self) -> None:
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(f"model.bottom_mlp must end in embedding_dim={self.embedding_dim}, got {self.bottom_mlp}")
        if self.top_mlp[-1] != 1:
            raise ValueError(f"model.top_mlp must end in 1 (the logit), got {self.top_mlp}")
        if len(self.table_rows) != len(self.multi_hot_sizes):
            raise ValueError("model.table_rows and model.multi_hot_sizes must name the same number of tables")

    @property
    def num_tables(self) -> int:
        return len(self.table_rows)

    @property
    def interaction_dim(self) -> int:
        return (self.num_tables + 1) * self.embedding_dim


def table_name(k: int) -> str:
    return f"t_cat_{k}"


def _mlp(in_features: int, sizes: tuple[int, ...], relu_last: bool, device) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, out_features in enumerate(sizes):
        layers.append(nn.Linear(in_features, out_features, device=device))
        if relu_last or i < len(sizes) - 1:
            layers.append(nn.ReLU())
        in_features = out_features
    return nn.Sequential(*layers)


class LowRankCrossLayer(nn.Module):
    """x0 * (up(down(x)) + bias) + x, with down: in -> rank (no bias) and up: rank -> in (its bias is the
    layer's b). The two weights have the shapes of torchrec's V_kernels (rank, in) and W_kernels (in, rank)."""

    def __init__(self, in_features: int, rank: int, device=None):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, device=device)
        self.up = nn.Linear(rank, in_features, bias=True, device=device)
        nn.init.xavier_normal_(self.down.weight)
        nn.init.xavier_normal_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(x, x0, self.up(self.down(x)))


class CrossNet(nn.Module):
    def __init__(self, in_features: int, num_layers: int, rank: int, device=None):
        super().__init__()
        self.layers = nn.ModuleList(LowRankCrossLayer(in_features, rank, device) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x)
        return x


class DLRMDCNv2(nn.Module):
    def __init__(self, cfg: DLRMModelConfig, *, sparse_device: torch.device | None = None,
                 dense_device: torch.device | None = None):
        super().__init__()
        self.cfg = cfg
        names = self.feature_names = sparse_feature_names(cfg.num_tables)
        self.embeddings = EmbeddingBagCollection(
            tables=[EmbeddingBagConfig(name=table_name(k), embedding_dim=cfg.embedding_dim, num_embeddings=rows,
                                       feature_names=[names[k]], pooling=PoolingType.SUM)
                    for k, rows in enumerate(cfg.table_rows)],
            device=sparse_device)
        self.bottom_mlp = _mlp(NUM_DENSE, cfg.bottom_mlp, relu_last=True, device=dense_device)
        self.cross = CrossNet(cfg.interaction_dim, cfg.dcn_layers, cfg.dcn_low_rank, device=dense_device)
        self.top_mlp = _mlp(cfg.interaction_dim, cfg.top_mlp, relu_last=False, device=dense_device)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """dense (B, 13) float, sparse: KJT keyed cat_0..cat_25 -> logits (B,)."""
        bottom = self.bottom_mlp(dense)
        pooled = self.embeddings(sparse)
        # A sharded collection returns its features grouped by sharding type, not in table order.
        if pooled.keys() == self.feature_names:
            parts = [pooled.values()]
        else:
            by_name = pooled.to_dict()
            parts = [by_name[name] for name in self.feature_names]
        x0 = torch.cat([bottom] + [p.to(bottom.dtype) for p in parts], dim=1)  # (B, 27 * D)
        return self.top_mlp(self.cross(x0)).squeeze(-1)

    def dense_parameters(self):
        """(name, parameter) of everything but the embedding tables: the dense Adagrad's share."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("embeddings.")]


def build_dlrm(cfg: DLRMModelConfig, *, sparse_device: torch.device | str = "meta",
               dense_device: torch.device | str = "cpu") -> DLRMDCNv2:
    """Tables on `sparse_device` (default meta: nothing allocated until they are sharded or materialised)."""
    return DLRMDCNv2(cfg, sparse_device=torch.device(sparse_device), dense_device=torch.device(dense_device))


def materialize_embeddings(model: DLRMDCNv2, device: torch.device) -> None:
    """Allocate meta tables on `device` and give them their initial values (single-rank runs only)."""
    ebc = model.embeddings
    if any(p.is_meta for p in ebc.parameters()):
        ebc.to_empty(device=device)
        # EmbeddingBagCollection.reset_parameters() is a no-op for a collection built on meta (it checks the
        # device it was built with), so the configs' init functions are applied here.
        with torch.no_grad():
            for table in ebc.embedding_bag_configs():
                table.init_fn(ebc.embedding_bags[table.name].weight)


def parameter_count(cfg: DLRMModelConfig) -> dict[str, int]:
    """Counted from the config, so the full model is never built to count it."""
    with torch.device("meta"):
        model = DLRMDCNv2(cfg, sparse_device=torch.device("meta"), dense_device=torch.device("meta"))
    sparse = sum(p.numel() for p in model.embeddings.parameters())
    dense = sum(p.numel() for _, p in model.dense_parameters())
    return {"embedding": sparse, "dense": dense}

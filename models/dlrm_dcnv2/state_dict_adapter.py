"""Weights in and out of torchrec's `DLRM_DCN` (the module the MLPerf reference trains), by name.

    ours                                   torchrec DLRM_DCN
    embeddings.embedding_bags.T.weight     sparse_arch.embedding_bag_collection.embedding_bags.T.weight
    bottom_mlp.{2i}.{weight,bias}          dense_arch.model._mlp.{i}._linear.{weight,bias}
    cross.layers.{l}.down.weight           inter_arch.crossnet.V_kernels.{l}     (rank, in)
    cross.layers.{l}.up.weight             inter_arch.crossnet.W_kernels.{l}     (in, rank)
    cross.layers.{l}.up.bias               inter_arch.crossnet.bias.{l}
    top_mlp.{2i}.{weight,bias}, i < L-1    over_arch.model.0._mlp.{i}._linear.{weight,bias}
    top_mlp.{2(L-1)}.{weight,bias}         over_arch.model.1.{weight,bias}
Tensors keep their shapes: only names change. Table names are the same on both sides (`t_cat_k`).
"""

from __future__ import annotations

import re

from models.dlrm_dcnv2.model import DLRMModelConfig


def _ours_to_torchrec_name(name: str, top_layers: int) -> str:
    if name.startswith("embeddings."):
        return "sparse_arch.embedding_bag_collection." + name[len("embeddings."):]
    m = re.fullmatch(r"bottom_mlp\.(\d+)\.(weight|bias)", name)
    if m:
        return f"dense_arch.model._mlp.{int(m[1]) // 2}._linear.{m[2]}"
    m = re.fullmatch(r"cross\.layers\.(\d+)\.(down\.weight|up\.weight|up\.bias)", name)
    if m:
        kind = {"down.weight": "V_kernels", "up.weight": "W_kernels", "up.bias": "bias"}[m[2]]
        return f"inter_arch.crossnet.{kind}.{m[1]}"
    m = re.fullmatch(r"top_mlp\.(\d+)\.(weight|bias)", name)
    if m:
        layer = int(m[1]) // 2
        if layer == top_layers - 1:
            return f"over_arch.model.1.{m[2]}"
        return f"over_arch.model.0._mlp.{layer}._linear.{m[2]}"
    raise KeyError(f"no torchrec DLRM_DCN name for {name!r}")


def to_torchrec(state: dict, cfg: DLRMModelConfig) -> dict:
    """Our state dict -> one `DLRM_DCN.load_state_dict` accepts."""
    return {_ours_to_torchrec_name(k, len(cfg.top_mlp)): v for k, v in state.items()}


def from_torchrec(state: dict, cfg: DLRMModelConfig, our_names) -> dict:
    """A `DLRM_DCN` state dict -> ours; `our_names` are our model's state-dict keys (the mapping is by name)."""
    mapping = {_ours_to_torchrec_name(k, len(cfg.top_mlp)): k for k in our_names}
    missing = sorted(set(mapping) - set(state))
    extra = sorted(set(state) - set(mapping))
    if missing or extra:
        raise KeyError(f"torchrec state dict does not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    return {mapping[k]: v for k, v in state.items()}

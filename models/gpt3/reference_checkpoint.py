"""The MLPerf GPT-3 initial checkpoint (4000 steps at GBS 1536, with Adam moments), read into our model.

    report = load_reference_checkpoint(ckpt_dir, chunks, optimizer)   # each rank gets only its shards
    write_synthetic_reference_checkpoint(cfg, ckpt_dir)              # the same layout for the debug model

The reference checkpoint is a Megatron distributed checkpoint in the "zarr" backend: one zarr array per
tensor, named by Megatron-LM's legacy parameter names, with the transformer layers of every pipeline stage
stacked on a leading axis ([96, ...] at full size), Adam moments under `optimizer.state.exp_avg.` and
`optimizer.state.exp_avg_sq.`, fp32 master weights under `optimizer.state.fp32_from_fp16.` (bf16
checkpoint only), and `common.pt` holding the step counters. megatron-core 0.16 no longer reads zarr, so:

  1. megatron-core describes what this rank holds: `sharded_state_dict()` of each model chunk and of the
     optimizer gives every local tensor its global key, global shape and offset (TP/PP/VPP aware);
  2. each key is renamed to the reference's (legacy names, TE-style and local-spec keys map alike);
  3. that region is read from the zarr array (runtime/mcore/zarr_array.py) and loaded with `load_state_dict`.

The embedding's vocabulary may be padded differently (Megatron pads to a multiple of 128*TP): rows are
read where the checkpoint has them and zero beyond, as Megatron's own zarr loader did. Legacy Megatron's
fused QKV rows are ordered (head, q|k|v, head_dim), which is megatron-core's layout with one query group
per head, so no permutation is needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_inplace
from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedObject, ShardedTensor

from runtime.mcore.zarr_array import ZarrArray, ZarrError, write_zarr

# megatron-core sharded key (both specs key their norms TE-style) -> Megatron-LM legacy key.
_LAYER = "language_model.encoder.layers."
KEY_MAP = {
    "embedding.word_embeddings.weight": "language_model.embedding.word_embeddings.weight",
    "embedding.position_embeddings.weight": "language_model.embedding.position_embeddings.weight",
    "decoder.final_layernorm.weight": "language_model.encoder.final_layernorm.weight",
    "decoder.final_layernorm.bias": "language_model.encoder.final_layernorm.bias",
    "decoder.layers.self_attention.linear_qkv.layer_norm_weight": _LAYER + "input_layernorm.weight",
    "decoder.layers.self_attention.linear_qkv.layer_norm_bias": _LAYER + "input_layernorm.bias",
    "decoder.layers.self_attention.linear_qkv.weight": _LAYER + "self_attention.query_key_value.weight",
    "decoder.layers.self_attention.linear_qkv.bias": _LAYER + "self_attention.query_key_value.bias",
    "decoder.layers.self_attention.linear_proj.weight": _LAYER + "self_attention.dense.weight",
    "decoder.layers.self_attention.linear_proj.bias": _LAYER + "self_attention.dense.bias",
    "decoder.layers.mlp.linear_fc1.layer_norm_weight": _LAYER + "post_attention_layernorm.weight",
    "decoder.layers.mlp.linear_fc1.layer_norm_bias": _LAYER + "post_attention_layernorm.bias",
    "decoder.layers.mlp.linear_fc1.weight": _LAYER + "mlp.dense_h_to_4h.weight",
    "decoder.layers.mlp.linear_fc1.bias": _LAYER + "mlp.dense_h_to_4h.bias",
    "decoder.layers.mlp.linear_fc2.weight": _LAYER + "mlp.dense_4h_to_h.weight",
    "decoder.layers.mlp.linear_fc2.bias": _LAYER + "mlp.dense_4h_to_h.bias",
}
# megatron-core optimizer prefix -> the reference's. fp32 master weights are `fp32_param` (mixed-precision
# optimizer) or `param` (distributed optimizer, "fully_reshardable" format); they fall back to the model
# weights in an fp32 checkpoint, which has no separate copy.
_OPTIM_PREFIXES = {"optimizer.state.exp_avg.": "optimizer.state.exp_avg.",
                   "optimizer.state.exp_avg_sq.": "optimizer.state.exp_avg_sq.",
                   "optimizer.state.fp32_param.": "optimizer.state.fp32_from_fp16.",
                   "optimizer.state.param.": "optimizer.state.fp32_from_fp16."}
_MASTER_WEIGHTS = ("optimizer.state.fp32_param.", "optimizer.state.param.")
_VOCAB_KEYS = ("embedding.word_embeddings.weight",)


class ReferenceCheckpointError(RuntimeError):
    pass


def reference_key(key: str) -> tuple[str, str | None]:
    """(reference key, fallback key or None) for a megatron-core sharded key."""
    for ours, theirs in _OPTIM_PREFIXES.items():
        if key.startswith(ours):
            base = reference_key(key[len(ours):])[0]
            fallback = base if ours in _MASTER_WEIGHTS else None
            return theirs + base, fallback
    if key not in KEY_MAP:
        raise ReferenceCheckpointError(f"no reference-checkpoint name for megatron-core key {key!r}")
    return KEY_MAP[key], None


def read_common(ckpt_dir: str) -> dict:
    """`common.pt` (weights-only) and `metadata.json`, checked; returns common.pt's dict."""
    meta_file = os.path.join(ckpt_dir, "metadata.json")
    if os.path.exists(meta_file):
        with open(meta_file) as f:
            meta = json.load(f)
        if meta.get("sharded_backend") != "zarr":
            raise ReferenceCheckpointError(f"{meta_file}: sharded_backend {meta.get('sharded_backend')!r}, "
                                           "the reference checkpoint is 'zarr'")
    common_file = os.path.join(ckpt_dir, "common.pt")
    if not os.path.exists(common_file):
        raise ReferenceCheckpointError(f"{ckpt_dir}: no common.pt (build it from the reference's common_fp32.json "
                                       "or common_bf16.json: models/gpt3/prepare/common_json_to_pt.py)")
    common = torch.load(common_file, map_location="cpu", weights_only=True)
    if "global_step" not in common:
        raise ReferenceCheckpointError(f"{common_file}: missing key 'global_step'")
    return common


def adam_step(common: dict) -> int:
    """The Adam step count the checkpoint's moments were built with (the reference: 4000)."""
    try:
        return int(common["optimizer_states"][0]["optimizer"]["param_groups"][0]["step"])
    except (KeyError, IndexError, TypeError):
        return int(common["global_step"])


class _Reader:
    def __init__(self, ckpt_dir: str):
        self.ckpt_dir = ckpt_dir
        self.arrays: dict[str, ZarrArray] = {}
        self.bytes_read = 0
        self._lock = threading.Lock()  # fill() runs in several threads

    def array(self, key: str) -> ZarrArray | None:
        with self._lock:
            if key not in self.arrays:
                path = os.path.join(self.ckpt_dir, key)
                if not os.path.isdir(path):
                    return None
                self.arrays[key] = ZarrArray(path)
            return self.arrays[key]

    def fill(self, sh: ShardedTensor) -> torch.Tensor:
        name, fallback = reference_key(sh.key)
        arr = self.array(name) or (self.array(fallback) if fallback else None)
        if arr is None:
            raise ReferenceCheckpointError(f"{os.path.join(self.ckpt_dir, name)}: missing from the checkpoint "
                                           f"(needed for {sh.key})")
        region = list(sh.global_slice())
        shape = tuple(sh.global_shape)
        vocab = any(sh.key.endswith(k) for k in _VOCAB_KEYS)
        if arr.shape != shape and not (vocab and arr.shape[1:] == shape[1:]):
            raise ReferenceCheckpointError(f"{arr.path}: global shape {arr.shape}, the model expects {shape} for "
                                           f"{sh.key} (a different model size?)")
        local = torch.zeros(sh.local_shape, dtype=arr.dtype)
        if vocab:  # rows past the checkpoint's vocabulary stay zero
            start, stop = region[0].start, min(region[0].stop, arr.shape[0])
            if stop > start:
                local[: stop - start] = arr.read((slice(start, stop), *region[1:]))
        else:
            full = arr.read(tuple(r if isinstance(r, slice) else slice(r, r + 1) for r in region))
            local.copy_(full.reshape(sh.local_shape))
        if sh.flattened_range is not None:  # a distributed-optimizer shard of this tensor
            local = local.flatten()[sh.flattened_range]
        with self._lock:
            self.bytes_read += local.numel() * local.element_size()
        return local.to(sh.dtype)


@dataclass
class LoadReport:
    step: int  # the Adam step count of the checkpoint (the reference: 4000)
    arrays_read: int  # on this rank; 0 on data-parallel ranks other than the first
    bytes_read: int
    seconds: float


def _data_parallel():
    """(group, global rank of its first member, this rank reads) or (None, None, True) without DP."""
    if not dist.is_initialized() or parallel_state.get_data_parallel_world_size() == 1:
        return None, None, True
    return (parallel_state.get_data_parallel_group(), parallel_state.get_data_parallel_src_rank(),
            parallel_state.get_data_parallel_rank() == 0)


class _Slot:
    """Where a tensor goes in the state dict once it has been read."""

    def __init__(self, index: int):
        self.index = index


def _fill(state: dict, reader: _Reader, group, src: int | None, reading: bool, threads: int) -> None:
    """Replace every ShardedTensor in `state` by its data, read by `threads` threads at once (parallel reads
    are what a parallel file system serves fast). With data parallelism the first DP rank reads and
    broadcasts (the replicas hold identical shards, so the file system serves each byte once per
    model-parallel rank instead of once per GPU); a read error on it is raised on every replica."""
    wanted: list[ShardedTensor] = []

    def collect(x):
        if isinstance(x, ShardedTensor):
            wanted.append(x)
            return _Slot(len(wanted) - 1)
        if isinstance(x, ShardedObject):  # TE's FP8 metadata: not in the reference, keep what the layer has
            return x.data
        if isinstance(x, LocalNonpersistentObject):  # this rank's optimizer param groups
            return x.unwrap()
        return x

    dict_list_map_inplace(collect, state)
    error, tensors = None, []
    if reading:
        try:
            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                tensors = list(pool.map(reader.fill, wanted))
        except (ReferenceCheckpointError, ZarrError) as e:
            error = e if isinstance(e, ReferenceCheckpointError) else ReferenceCheckpointError(str(e))
    else:
        tensors = [torch.empty(x.local_shape if x.flattened_range is None else
                               (x.flattened_range.stop - x.flattened_range.start,), dtype=x.dtype) for x in wanted]
    if group is not None:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" \
            else torch.device("cpu")
        failed = torch.tensor([1 if error else 0], device=device)
        dist.broadcast(failed, src=src, group=group)
        if failed.item() and not error:
            error = ReferenceCheckpointError(f"{reader.ckpt_dir}: the first data-parallel rank (global rank {src}) "
                                             "could not read the checkpoint; its error names the file")
        if not error:
            for t in tensors:
                buf = t.to(device)
                dist.broadcast(buf, src=src, group=group)
                if buf is not t:
                    t.copy_(buf)
    if error:
        raise error
    dict_list_map_inplace(lambda x: tensors[x.index] if isinstance(x, _Slot) else x, state)


def load_reference_checkpoint(ckpt_dir: str, chunks, optimizer, *, threads: int = 8) -> LoadReport:
    """Load the model weights, Adam moments (and fp32 master weights) this rank holds.

    `chunks` are the DDP-wrapped megatron model chunks; `optimizer` has `sharded_state_dict(model_sd,
    is_loading=True)` and `load_state_dict(state, step=)` (runtime/mcore/parallelize.py). The model is
    loaded, and its host copy freed, before the optimizer state is read.
    """
    start = time.time()
    common = read_common(ckpt_dir)
    step = adam_step(common)
    reader = _Reader(ckpt_dir)
    group, src, reading = _data_parallel()
    model_sd = {f"model{i}": c.module.sharded_state_dict() for i, c in enumerate(chunks)}
    optim_sd = optimizer.sharded_state_dict(model_sd, is_loading=True)  # built while model_sd holds the params
    _fill(model_sd, reader, group, src, reading, threads)
    for i, chunk in enumerate(chunks):
        chunk.module.load_state_dict(model_sd[f"model{i}"])
    del model_sd
    _fill(optim_sd, reader, group, src, reading, threads)
    optimizer.load_state_dict(optim_sd, step=step)
    return LoadReport(step, len(reader.arrays), reader.bytes_read, time.time() - start)


# -- the debug model's stand-in, in the same layout ------------------------------------------------------------

def _draw(seed: int, name: str, shape, std: float) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)
    return torch.randn(shape, generator=g) * std


def reference_shapes(m, vocab_rows: int) -> dict[str, tuple[int, ...]]:
    """Global shape of every reference tensor for model config `m` (layers stacked on axis 0)."""
    h, f, L = m.hidden_size, m.ffn_hidden_size, m.num_layers
    shapes = {"language_model.embedding.word_embeddings.weight": (vocab_rows, h),
              "language_model.embedding.position_embeddings.weight": (m.seq_length, h),
              "language_model.encoder.final_layernorm.weight": (h,),
              "language_model.encoder.final_layernorm.bias": (h,)}
    per_layer = {"input_layernorm.weight": (h,), "input_layernorm.bias": (h,),
                 "self_attention.query_key_value.weight": (3 * h, h), "self_attention.query_key_value.bias": (3 * h,),
                 "self_attention.dense.weight": (h, h), "self_attention.dense.bias": (h,),
                 "post_attention_layernorm.weight": (h,), "post_attention_layernorm.bias": (h,),
                 "mlp.dense_h_to_4h.weight": (f, h), "mlp.dense_h_to_4h.bias": (f,),
                 "mlp.dense_4h_to_h.weight": (h, f), "mlp.dense_4h_to_h.bias": (h,)}
    shapes.update({_LAYER + k: (L, *s) for k, s in per_layer.items()})
    return shapes


def _chunks(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One layer per chunk along the stacked axis, and the first tensor axis split in two."""
    layered = name.startswith(_LAYER)
    chunks = list(shape)
    if layered:
        chunks[0] = 1
    axis = 1 if layered else 0
    chunks[axis] = (shape[axis] + 1) // 2
    return tuple(chunks)


def write_synthetic_reference_checkpoint(m, out_dir: str, *, step: int, seed: int) -> None:
    """A checkpoint for model config `m` in the reference layout: matrices ~ N(0, init std) keyed by name
    (so any TP/PP layout reads identical weights), norms 1 and biases 0 as Megatron initialises them, and
    small nonzero Adam moments, so that loading them is exercised. Chunks split rows in two, as a TP=2
    writer would, so readers cross chunk boundaries."""
    vocab_rows = m.padded_vocab_size(1)
    for name, shape in reference_shapes(m, vocab_rows).items():
        if name.endswith("layernorm.weight"):
            weight = torch.ones(shape)
        elif name.endswith(".bias"):
            weight = torch.zeros(shape)
        else:
            weight = _draw(seed, name, shape, m.init_method_std)
        exp_avg = _draw(seed, "exp_avg:" + name, shape, 1e-4)
        exp_avg_sq = exp_avg.square() + 1e-8
        chunks = _chunks(name, shape)
        for prefix, tensor in (("", weight), ("optimizer.state.exp_avg.", exp_avg),
                               ("optimizer.state.exp_avg_sq.", exp_avg_sq)):
            write_zarr(os.path.join(out_dir, prefix + name), tensor, chunks=chunks)
    common = {"global_step": step, "epoch": 0,
              "optimizer_states": [{"optimizer": {"param_groups": [{"step": step}]}}]}
    torch.save(common, os.path.join(out_dir, "common.pt"))
    with open(os.path.join(out_dir, "metadata.json"), "w") as f:
        json.dump({"sharded_backend": "zarr", "sharded_backend_version": 1, "common_backend": "torch",
                   "common_backend_version": 1}, f)

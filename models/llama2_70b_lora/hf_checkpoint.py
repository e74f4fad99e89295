"""The base model from a HF Llama checkpoint directory, read per TP shard into megatron's layout.

    <dir>/config.json                              HF LlamaConfig (model_type "llama")
    <dir>/model.safetensors                        one file, or
    <dir>/model.safetensors.index.json + shards    {"weight_map": {tensor name: file}}

HF names -> megatron (one pipeline stage; i = layer):
    model.embed_tokens.weight                          embedding.word_embeddings.weight    rows split over TP
    model.layers.i.input_layernorm.weight              decoder.layers.i.input_layernorm.weight
    model.layers.i.self_attn.{q,k,v}_proj.weight       decoder.layers.i.self_attention.linear_qkv.weight
      or the MLPerf model's fused .qkv_proj.weight     (rows [q; k; v], the `llama-v2-fused-qkv` layout)
    model.layers.i.self_attn.o_proj.weight             ...self_attention.linear_proj.weight  columns split
    model.layers.i.post_attention_layernorm.weight     decoder.layers.i.pre_mlp_layernorm.weight
    model.layers.i.mlp.{gate,up}_proj.weight           decoder.layers.i.mlp.linear_fc1.weight   [gate; up] per shard
    model.layers.i.mlp.down_proj.weight                decoder.layers.i.mlp.linear_fc2.weight   columns split
    model.norm.weight                                  decoder.final_layernorm.weight
    lm_head.weight                                     output_layer.weight                  rows split over TP

Megatron's fused QKV groups the rows by query group: for each KV head g, the q rows of its
heads/groups query heads, then k_g, then v_g; a TP rank holds groups/tp whole groups. Every tensor is read
through safetensors' slices, so a rank reads only its rows (its columns, for the row-parallel weights) and
the whole 70B model is never in one process's memory. Names, shapes and dtypes are checked against the
config; a missing tensor or file, or a shape the config does not give, raises naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointError(ValueError):
    pass


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    heads: int
    groups: int
    ffn: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_FILE)
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a HF Llama checkpoint directory holds config.json and "
                              "safetensors files)") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size"):
        if key not in cfg:
            raise CheckpointError(f"{path}: missing key {key!r}")
    if cfg.get("model_type", "llama") != "llama":
        raise CheckpointError(f"{path}: model_type {cfg['model_type']!r}, expected 'llama'")
    if cfg.get("tie_word_embeddings", False):
        raise CheckpointError(f"{path}: tie_word_embeddings is true; Llama 2's output layer is its own")
    return cfg


def shape_of(hf_cfg: dict) -> LlamaShape:
    heads = hf_cfg["num_attention_heads"]
    return LlamaShape(layers=hf_cfg["num_hidden_layers"], hidden=hf_cfg["hidden_size"], heads=heads,
                      groups=hf_cfg.get("num_key_value_heads", heads), ffn=hf_cfg["intermediate_size"],
                      vocab=hf_cfg["vocab_size"])


def hf_config(m) -> dict:
    """The HF LlamaConfig dict of a models/llama2_70b_lora ModelConfig (what the synthetic writer stores)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": m.hidden_size,
            "intermediate_size": m.ffn_hidden_size, "num_attention_heads": m.num_attention_heads,
            "num_key_value_heads": m.num_query_groups, "num_hidden_layers": m.num_layers,
            "vocab_size": m.vocab_size, "rms_norm_eps": m.rms_norm_eps, "rope_theta": m.rope_theta,
            "max_position_embeddings": m.seq_length, "hidden_act": "silu", "tie_word_embeddings": False,
            "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}


def check_config_matches(hf_cfg: dict, m, where: str) -> None:
    """The checkpoint's config against the flavour's model (a mismatch would load a different model)."""
    pairs = {"hidden_size": m.hidden_size, "intermediate_size": m.ffn_hidden_size,
             "num_attention_heads": m.num_attention_heads, "num_hidden_layers": m.num_layers,
             "num_key_value_heads": m.num_query_groups, "vocab_size": m.vocab_size}
    found = dict(hf_cfg, num_key_value_heads=hf_cfg.get("num_key_value_heads", hf_cfg["num_attention_heads"]))
    wrong = {k: (found[k], v) for k, v in pairs.items() if found[k] != v}
    if wrong:
        raise CheckpointError(f"{where}: config.json disagrees with the model config: "
                              + ", ".join(f"{k} {a} (config wants {b})" for k, (a, b) in wrong.items()))
    # transformers 5 writes RoPE's settings under rope_parameters, 4.x at the top level
    rope = dict(hf_cfg.get("rope_parameters") or hf_cfg.get("rope_scaling") or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{where}: config.json asks for RoPE scaling {rope}; Llama 2 uses plain RoPE")
    found = {"rms_norm_eps": hf_cfg.get("rms_norm_eps"), "rope_theta": hf_cfg.get("rope_theta", rope.get("rope_theta"))}
    for key, value in (("rms_norm_eps", m.rms_norm_eps), ("rope_theta", m.rope_theta)):
        if found[key] is not None and abs(float(found[key]) - value) > 1e-12 * max(1.0, abs(value)):
            raise CheckpointError(f"{where}: config.json {key} {found[key]}, the model config says {value}")


class SafetensorsDirectory:
    """Tensors of a HF checkpoint directory by name, read by region."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        self.directory = directory
        self._safe_open = safe_open
        index = os.path.join(directory, INDEX_FILE)
        if os.path.exists(index):
            try:
                with open(index) as f:
                    self.files = dict(json.load(f)["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index with a weight_map ({e!r})") from e
        elif os.path.exists(os.path.join(directory, SINGLE_FILE)):
            self.files = None
        else:
            raise CheckpointError(f"{directory}: neither {INDEX_FILE} nor {SINGLE_FILE}")
        self._open: dict[str, object] = {}

    def _handle(self, name: str):
        file = SINGLE_FILE if self.files is None else self.files.get(name)
        if file is None:
            raise CheckpointError(f"{os.path.join(self.directory, INDEX_FILE)}: no tensor {name!r}")
        if file not in self._open:
            path = os.path.join(self.directory, file)
            try:
                self._open[file] = self._safe_open(path, framework="pt")
            except FileNotFoundError:
                raise CheckpointError(f"{path}: missing (named by the index for {name!r})") from None
            except Exception as e:  # safetensors raises its own error type for a truncated or foreign file
                raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
        handle = self._open[file]
        if self.files is None and name not in handle.keys():
            raise CheckpointError(f"{os.path.join(self.directory, file)}: no tensor {name!r}")
        return handle, os.path.join(self.directory, file)

    def has(self, name: str) -> bool:
        if self.files is not None:
            return name in self.files
        return name in self._handle_file().keys()

    def _handle_file(self):
        if SINGLE_FILE not in self._open:
            self._open[SINGLE_FILE] = self._safe_open(os.path.join(self.directory, SINGLE_FILE), framework="pt")
        return self._open[SINGLE_FILE]

    def read(self, name: str, shape: tuple[int, ...], rows: slice = slice(None), cols: slice | None = None):
        """Rows (and columns) of tensor `name`, whose full shape must be `shape`."""
        handle, path = self._handle(name)
        part = handle.get_slice(name)
        found = tuple(part.get_shape())
        if found != tuple(shape):
            raise CheckpointError(f"{path}: {name} has shape {found}, the config gives {tuple(shape)}")
        return part[rows] if cols is None else part[rows, cols]


def _qkv_rows(ckpt: SafetensorsDirectory, prefix: str, s: LlamaShape, tp: int, rank: int) -> torch.Tensor:
    """This rank's rows of megatron's fused QKV: per query group [q heads of the group; k; v]."""
    d, per_group = s.head_dim, s.heads // s.groups
    fused = ckpt.has(f"{prefix}.qkv_proj.weight")
    parts = []
    for g in range(rank * s.groups // tp, (rank + 1) * s.groups // tp):
        q = slice(g * per_group * d, (g + 1) * per_group * d)
        kv = slice(g * d, (g + 1) * d)
        if fused:  # rows [q (heads*d); k (groups*d); v (groups*d)]
            name, shape = f"{prefix}.qkv_proj.weight", ((s.heads + 2 * s.groups) * d, s.hidden)
            k_at, v_at = s.heads * d, (s.heads + s.groups) * d
            parts += [ckpt.read(name, shape, q), ckpt.read(name, shape, slice(k_at + kv.start, k_at + kv.stop)),
                      ckpt.read(name, shape, slice(v_at + kv.start, v_at + kv.stop))]
        else:
            parts += [ckpt.read(f"{prefix}.q_proj.weight", (s.heads * d, s.hidden), q),
                      ckpt.read(f"{prefix}.k_proj.weight", (s.groups * d, s.hidden), kv),
                      ckpt.read(f"{prefix}.v_proj.weight", (s.groups * d, s.hidden), kv)]
    return torch.cat(parts)


def _split(n: int, tp: int, rank: int) -> slice:
    return slice(rank * n // tp, (rank + 1) * n // tp)


def megatron_tensor(ckpt: SafetensorsDirectory, name: str, s: LlamaShape, tp: int, rank: int) -> torch.Tensor:
    """The TP shard `rank` of megatron parameter `name`, read from the HF checkpoint."""
    h = s.hidden
    if name == "embedding.word_embeddings.weight":
        return ckpt.read("model.embed_tokens.weight", (s.vocab, h), _split(s.vocab, tp, rank))
    if name == "output_layer.weight":
        return ckpt.read("lm_head.weight", (s.vocab, h), _split(s.vocab, tp, rank))
    if name == "decoder.final_layernorm.weight":
        return ckpt.read("model.norm.weight", (h,))
    parts = name.split(".")
    if parts[:2] != ["decoder", "layers"] or len(parts) < 5:
        raise CheckpointError(f"{ckpt.directory}: no HF tensor for megatron parameter {name!r}")
    layer, rest = int(parts[2]), ".".join(parts[3:])
    hf = f"model.layers.{layer}"
    if rest == "input_layernorm.weight":
        return ckpt.read(f"{hf}.input_layernorm.weight", (h,))
    # TE's spec fuses the pre-MLP norm into fc1 (TELayerNormColumnParallelLinear): the same weight, named there
    if rest in ("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight"):
        return ckpt.read(f"{hf}.post_attention_layernorm.weight", (h,))
    if rest == "self_attention.linear_qkv.weight":
        return _qkv_rows(ckpt, f"{hf}.self_attn", s, tp, rank)
    if rest == "self_attention.linear_proj.weight":
        return ckpt.read(f"{hf}.self_attn.o_proj.weight", (h, h), slice(None), _split(h, tp, rank))
    if rest == "mlp.linear_fc1.weight":
        rows = _split(s.ffn, tp, rank)
        return torch.cat([ckpt.read(f"{hf}.mlp.gate_proj.weight", (s.ffn, h), rows),
                          ckpt.read(f"{hf}.mlp.up_proj.weight", (s.ffn, h), rows)])
    if rest == "mlp.linear_fc2.weight":
        return ckpt.read(f"{hf}.mlp.down_proj.weight", (h, s.ffn), slice(None), _split(s.ffn, tp, rank))
    raise CheckpointError(f"{ckpt.directory}: no HF tensor for megatron parameter {name!r}")


@torch.no_grad()
def load_hf_checkpoint(directory: str, model: torch.nn.Module, m, *, tp: int, tp_rank: int) -> int:
    """Fill every frozen base parameter of `model` (LoRA adapters untouched) with this rank's shard of the
    HF checkpoint in `directory`. Returns the number of bytes read."""
    hf_cfg = read_hf_config(directory)
    check_config_matches(hf_cfg, m, directory)
    s = shape_of(hf_cfg)
    ckpt = SafetensorsDirectory(directory)
    read = 0
    for name, param in model.named_parameters():
        if ".adapter." in name:
            continue
        value = megatron_tensor(ckpt, name, s, tp, tp_rank)
        if value.shape != param.shape:
            raise CheckpointError(f"{directory}: {name} shard has shape {tuple(value.shape)}, the model's is "
                                  f"{tuple(param.shape)}")
        if not value.is_floating_point():
            raise CheckpointError(f"{directory}: {name} is stored as {value.dtype}, not a float type")
        param.copy_(value.to(param.dtype))
        read += value.numel() * value.element_size()
    return read


def write_hf_checkpoint(directory: str, tensors: dict[str, torch.Tensor], config: dict, *, shards: int = 2,
                        fused_qkv: bool = False) -> None:
    """A HF-layout checkpoint directory (config.json, safetensors shards + index) from HF-named tensors;
    `fused_qkv` stores each layer's q/k/v as one `qkv_proj` (the MLPerf model's layout)."""
    from safetensors.torch import save_file

    tensors = dict(tensors)
    if fused_qkv:
        for i in range(config["num_hidden_layers"]):
            p = f"model.layers.{i}.self_attn"
            tensors[f"{p}.qkv_proj.weight"] = torch.cat([tensors.pop(f"{p}.{x}_proj.weight") for x in "qkv"])
    os.makedirs(directory, exist_ok=True)
    names = sorted(tensors)
    weight_map = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        mine = names[k::shards]
        save_file({n: tensors[n].contiguous() for n in mine}, os.path.join(directory, file), metadata={"format": "pt"})
        weight_map.update({n: file for n in mine})
    with open(os.path.join(directory, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
                   "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(directory, CONFIG_FILE), "w") as f:
        json.dump(config, f, indent=1)

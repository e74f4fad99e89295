"""A HF Llama checkpoint (separate q/k/v_proj) -> the MLPerf model's layout (one `qkv_proj` per layer, rows
[q; k; v]), shard by shard, never holding more than one output shard in memory.

    python -m models.llama2_70b_lora.prepare.fuse_qkv --src /data/Llama-2-70b-hf --out /data/llama2-70b-fused

Both layouts load into the benchmark (models/llama2_70b_lora/hf_checkpoint.py reads either); this writes the
one the reference's checkpoint uses, so a directory made here and one downloaded from MLCommons are read the
same way. config.json and the tokenizer files are copied as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

from models.llama2_70b_lora.hf_checkpoint import (
    CONFIG_FILE,
    INDEX_FILE,
    SafetensorsDirectory,
    read_hf_config,
    shape_of,
)


def _names(src: SafetensorsDirectory) -> list[str]:
    if src.files is not None:
        return sorted(src.files)
    return sorted(src._handle_file().keys())


def fuse_qkv(src_dir: str, out_dir: str, layers_per_shard: int = 4) -> int:
    """Writes out_dir; returns the number of shards."""
    from safetensors.torch import save_file

    cfg = read_hf_config(src_dir)
    s = shape_of(cfg)
    src = SafetensorsDirectory(src_dir)
    names = _names(src)
    d = s.head_dim
    shapes = {"q_proj": (s.heads * d, s.hidden), "k_proj": (s.groups * d, s.hidden), "v_proj": (s.groups * d, s.hidden)}
    os.makedirs(out_dir, exist_ok=True)
    groups: list[list[str]] = [[n for n in names if not n.startswith("model.layers.")]]
    for first in range(0, s.layers, layers_per_shard):
        mine = {f"model.layers.{i}." for i in range(first, min(first + layers_per_shard, s.layers))}
        groups.append([n for n in names if any(n.startswith(p) for p in mine)])
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in group:
            leaf = name.rsplit(".", 2)[-2] if name.endswith(".weight") else ""
            if leaf in ("k_proj", "v_proj"):
                continue
            if leaf == "q_proj":
                prefix = name.rsplit(".", 2)[0]
                name = f"{prefix}.qkv_proj.weight"
                tensors[name] = torch.cat([src.read(f"{prefix}.{p}.weight", shapes[p]) for p in shapes])
            else:
                handle, _ = src._handle(name)
                tensors[name] = handle.get_tensor(name)
            weight_map[name] = file
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
    with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    for extra in os.listdir(src_dir):
        if extra == CONFIG_FILE or extra.startswith("tokenizer") or extra == "generation_config.json":
            shutil.copy(os.path.join(src_dir, extra), os.path.join(out_dir, extra))
    return len(groups)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--layers-per-shard", type=int, default=4)
    args = p.parse_args(argv)
    print(f"wrote {fuse_qkv(args.src, args.out, args.layers_per_shard)} shards to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

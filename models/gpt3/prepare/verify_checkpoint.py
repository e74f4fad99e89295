"""Check a GPT-3 initial checkpoint before queuing a run: every array present, shaped, and complete on disk.

    python -m models.gpt3.prepare.verify_checkpoint /lustre/gpt3/ckpt4000 [--flavour dgxh100_64x8]

For each tensor of the flavour's model (weights, Adam first and second moments; the fp32 master copy when
the checkpoint is bf16) it reads the zarr header, compares the global shape with the model's (the
vocabulary may be padded differently), and checks that every chunk file exists with the size its header
implies (uncompressed arrays; compressed ones are only checked for presence). Reads no tensor data, so it
takes seconds on the 175B checkpoint. Exit 0 when all is well, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

from models.gpt3.reference_checkpoint import read_common, reference_shapes
from runtime.benchmark import load_spec
from runtime.mcore.zarr_array import ZarrArray, ZarrError

_VOCAB = "language_model.embedding.word_embeddings.weight"


def problems(ckpt_dir: str, model_cfg) -> list[str]:
    found = []
    try:
        read_common(ckpt_dir)
    except Exception as e:  # a missing/foreign common.pt, a non-zarr metadata.json
        found.append(str(e))
    prefixes = ["", "optimizer.state.exp_avg.", "optimizer.state.exp_avg_sq."]
    try:
        if ZarrArray(os.path.join(ckpt_dir, _VOCAB)).dtype.itemsize == 2:
            prefixes.append("optimizer.state.fp32_from_fp16.")  # a bf16 checkpoint keeps fp32 master weights
    except ZarrError:
        pass  # reported below
    for name, shape in reference_shapes(model_cfg, vocab_rows=0).items():
        for prefix in prefixes:
            path = os.path.join(ckpt_dir, prefix + name)
            try:
                arr = ZarrArray(path)
            except ZarrError as e:
                found.append(str(e))
                continue
            if name == _VOCAB:
                if arr.shape[1:] != shape[1:] or arr.shape[0] < model_cfg.vocab_size:
                    found.append(f"{path}: shape {arr.shape}, the model needs (>= {model_cfg.vocab_size}, {shape[1]})")
            elif arr.shape != shape:
                found.append(f"{path}: shape {arr.shape}, the model needs {shape}")
            found.extend(arr.check_chunk_files())
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.gpt3.prepare.verify_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint_dir")
    p.add_argument("--flavour", default="dgxh100_64x8")
    args = p.parse_args(argv)
    cfg = load_spec("gpt3").config(args.flavour)
    found = problems(args.checkpoint_dir, cfg.model)
    for line in found:
        print(line)
    print(f"{args.checkpoint_dir}: {'OK' if not found else f'{len(found)} problems'}")
    return 0 if not found else 1


if __name__ == "__main__":
    sys.exit(main())

"""Offline caption encoding (NVIDIA's `-encoded` shards): moments shards in, encoded shards out, so that the
train step reads (n, 8, 64, 64) moments and (n, 77, 1024) contexts and runs no text encoder
(data.encoded_captions=true).

    python -m pipelines.laion.prepare.encode_captions --data-dir D [--flavour dgxh100_1x8] [--out D] \\
        [--part I/N] [--batch 256] [overrides ...]

Reads D/webdataset-moments-filtered/*.tar and writes D (or --out)/webdataset-moments-filtered-encoded/ with the
same shard names and samples, each sample gaining `<key>.context.npy`: its caption through the flavour's frozen
OpenCLIP text encoder (data.sd_checkpoint's cond_stage_model, penultimate layer), computed in fp32 and stored
float16 (pipelines/laion/format.py). `--part I/N` takes every N-th shard from the I-th (0-based), so that N
processes or nodes share the work; shards already written are skipped, and each is written to a temporary name
and renamed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

from pipelines.laion import format as fmt
from runtime.atomic_write import atomic_path


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.laion.prepare.encode_captions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="holds the moments shards and the SD checkpoint")
    p.add_argument("--out", default="", help="where the encoded shard directory goes (default: --data-dir)")
    p.add_argument("--flavour", default="dgxh100_1x8", help="whose text encoder (model.clip, data.sd_checkpoint)")
    p.add_argument("--part", default="0/1", help="I/N: this process's share of the shards")
    p.add_argument("--batch", type=int, default=256, help="captions per encoder call")
    p.add_argument("overrides", nargs="*", help="section.field=value of the flavour's config")
    return p.parse_intermixed_args(argv)


def _part(text: str) -> tuple[int, int]:
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--part {text!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--part {text!r}: want 0 <= I < N")
    return index, count


@torch.no_grad()
def encode_shard(encoder, source: str, target: str, latent_size: int, batch: int, device: torch.device) -> int:
    """Encode one shard's captions into `target`; returns the number of samples."""
    samples = list(fmt.iterate_shard(source, latent_size))
    contexts = []
    for first in range(0, len(samples), batch):
        captions = [caption for _, _, caption in samples[first:first + batch]]
        context = encoder(encoder.tokenize(captions).to(device)).float()
        contexts.append(context.to(torch.float16).cpu().numpy())
    contexts = np.concatenate(contexts) if contexts else []
    with atomic_path(target) as tmp:
        fmt.write_shard(tmp, [(key, moments[None], caption, context)
                              for (key, moments, caption), context in zip(samples, contexts)])
    return len(samples)


def main(argv=None) -> int:
    args = parse_args(argv)
    from models.stable_diffusion import SPEC
    from models.stable_diffusion.benchmark import text_encoder
    from models.stable_diffusion.state_dict_adapter import load_ldm_checkpoint, split_checkpoint
    from runtime.config import apply_overrides

    try:
        index, count = _part(args.part)
        cfg = apply_overrides(SPEC.config(args.flavour), args.overrides)
        sources = fmt.shard_paths(args.data_dir)[index::count]
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ckpt = cfg.data.sd_checkpoint if os.path.isabs(cfg.data.sd_checkpoint) else \
        os.path.join(args.data_dir, cfg.data.sd_checkpoint)
    # One process per GPU (torchrun / srun set LOCAL_RANK / SLURM_LOCALID): each on its own device
    local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))
    device = torch.device("cuda", local % torch.cuda.device_count()) if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    encoder = text_encoder(cfg.model, split_checkpoint(load_ldm_checkpoint(ckpt), ckpt), ckpt).to(device)
    width = encoder.tower.ln_final.normalized_shape[0]
    if width != cfg.model.unet.context_dim:
        print(f"error: {ckpt}: the text encoder gives {width}-wide contexts, model.unet.context_dim is "
              f"{cfg.model.unet.context_dim}", file=sys.stderr)
        return 2
    out_dir = os.path.join(args.out or args.data_dir, fmt.ENCODED_SHARD_DIR)
    os.makedirs(out_dir, exist_ok=True)
    for source in sources:
        target = os.path.join(out_dir, os.path.basename(source))
        if os.path.exists(target):
            continue
        n = encode_shard(encoder, source, target, cfg.model.latent_size, args.batch, device)
        print(f"{target}: {n} samples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

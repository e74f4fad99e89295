"""Offline image -> moments conversion (the reference's webdataset_images2latents.py): LAION image shards
(`<key>.jpg` + `<key>.txt`) in, moments shards (`<key>.npy` float32 (1, 8, 64, 64) + `<key>.txt`) out.

Each image: RGB, short side resized to 512 (bicubic), centre crop 512, scaled to [-1, 1], through the VAE
encoder and quant_conv of the SD checkpoint (`first_stage_model.*`): the moments are the Gaussian's mean and
log-variance (4 + 4 channels), so that training samples a fresh latent each time.

    python -m pipelines.laion.prepare.images_to_moments --ckpt 512-base-ema.ckpt --out DIR shard.tar ...
"""

from __future__ import annotations

import argparse
import io
import os
import sys

import numpy as np
import torch

from pipelines.laion import format as fmt


def preprocess(image, size: int = 512) -> torch.Tensor:
    """A PIL image -> (3, size, size) in [-1, 1]: short side to `size` (bicubic), centre crop."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    from PIL import Image

    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


@torch.no_grad()
def moments_of(vae, images_B3HW: torch.Tensor) -> torch.Tensor:
    """(B, 8, H/f, W/f): quant_conv(encoder(x)), the moments LDM's DiagonalGaussianDistribution splits."""
    return vae.quant_conv(vae.encoder(images_B3HW))


def convert_shard(vae, path: str, out_path: str, size: int, batch: int, device: torch.device) -> int:
    import webdataset as wds
    from PIL import Image

    rows = []
    for raw in wds.WebDataset(path, shardshuffle=False, empty_check=False, nodesplitter=lambda urls: urls):
        key = raw["__key__"]
        image_bytes = next((raw[ext] for ext in ("jpg", "jpeg", "png", "webp") if ext in raw), None)
        if image_bytes is None or "txt" not in raw:
            raise ValueError(f"{path}: sample {key!r} lacks an image or a .txt caption")
        try:
            image = Image.open(io.BytesIO(image_bytes))
            rows.append((key, preprocess(image, size), raw["txt"].decode("utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: sample {key!r}: {type(e).__name__}: {e}") from None
    samples = []
    for first in range(0, len(rows), batch):
        chunk = rows[first:first + batch]
        m = moments_of(vae, torch.stack([r[1] for r in chunk]).to(device)).float().cpu().numpy()
        samples += [(key, m[i:i + 1].astype(np.float32), caption) for i, (key, _, caption) in enumerate(chunk)]
    fmt.write_shard(out_path, samples)
    return len(samples)


def main(argv=None) -> int:
    from models.stable_diffusion.config import vae_config
    from models.stable_diffusion.frozen import build_vae
    from models.stable_diffusion.state_dict_adapter import load_ldm_checkpoint, split_checkpoint

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True)
    p.add_argument("--vae", default="sd2", help="VAE configuration (models/stable_diffusion/config.py)")
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("shards", nargs="+")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    parts = split_checkpoint(load_ldm_checkpoint(args.ckpt), args.ckpt)
    vae = build_vae(vae_config(args.vae), parts["vae"], f"{args.ckpt} (first_stage_model)").to(device)
    for shard in args.shards:
        out = os.path.join(args.out, fmt.SHARD_DIR, os.path.basename(shard))
        n = convert_shard(vae, shard, out, args.size, args.batch, device)
        print(f"{shard}: {n} samples -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The debug flavour's stand-in for LAION moments, the SD checkpoint, the CLIP scorer and the FID network.

Captions determine latents, so that a run can learn something measurable: there are `classes` captions,
and each has a latent pattern P_k chosen (by gradient ascent through the small VAE decoder and CLIP) so that
its decoded image has a high CLIP cosine with its caption. A training sample of class k has moments whose
mean is P_k / 0.18215 plus a small per-sample offset and whose log-variance gives a latent std of 0.05. The
FID reference statistics are the small feature network's features of decoded reference latents of the eval
prompts. All networks are random-initialised from the synthetic seed and written in the real files' layouts:
`first_stage_model.*` (LDM VAE keys) + `cond_stage_model.model.*` (open_clip text keys) in one checkpoint.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from models.stable_diffusion.config import StableDiffusionConfig, clip_config, vae_config
from models.stable_diffusion.frozen import CLIP_MEAN, CLIP_STD, SmallFeatureNet, decode_images
from models.stable_diffusion.metrics import feature_statistics
from models.stable_diffusion.state_dict_adapter import TEXT_PREFIX, VAE_PREFIX, vae_to_ldm
from pipelines.laion import format as fmt

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPES = ("circle", "square", "triangle", "star")
SAMPLE_STD = 0.05  # per-sample latent spread (offset and sampling noise each)
SHARD_SAMPLES = 128


def captions_for(classes: int) -> list[str]:
    return [f"a photo of a {COLOURS[k % len(COLOURS)]} {SHAPES[k // len(COLOURS) % len(SHAPES)]}"
            for k in range(classes)]


def _patterns(clip, vae, tokens, channels: int, size: int, g: torch.Generator, steps: int = 60) -> torch.Tensor:
    """Latents (classes, C, size, size) whose decoded images CLIP scores high against their captions."""
    import torch.nn.functional as F

    with torch.no_grad():
        text = F.normalize(clip.encode_text(tokens).float(), dim=-1)
    z = torch.randn(len(tokens), channels, size, size, generator=g).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    for _ in range(steps):
        images = decode_images(vae, z, fmt.SCALE_FACTOR)
        image = F.normalize(clip.encode_image((images - mean) / std).float(), dim=-1)
        loss = -(image * text).sum(-1).mean() + 0.1 * (z.pow(2).mean() - 1).clamp(min=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach()


def write_synthetic_sd(cfg: StableDiffusionConfig, out_dir: str) -> None:
    from diffusers import AutoencoderKL
    from open_clip.model import CLIP

    d, e, m = cfg.data, cfg.eval, cfg.model
    torch.manual_seed(d.synthetic_seed)
    g = torch.Generator().manual_seed(d.synthetic_seed)
    clip = CLIP(**clip_config(m.clip)).eval()
    vae_cfg = vae_config(m.vae)
    vae = AutoencoderKL(**vae_cfg).eval()
    feature_net = SmallFeatureNet(e.fid_widths).eval()
    for p in (*clip.parameters(), *vae.parameters()):
        p.requires_grad_(False)

    import open_clip

    captions = captions_for(d.synthetic_classes)
    size, channels = m.latent_size, m.unet.in_channels
    patterns = _patterns(clip, vae, open_clip.tokenize(captions), channels, size, g)

    # Train shards: moments (1, 8, h, w) whose mean is the caption's pattern plus a per-sample offset.
    logvar = 2 * np.log(SAMPLE_STD / fmt.SCALE_FACTOR)
    samples = []
    for i in range(d.train_samples):
        k = i % len(captions)
        mean = (patterns[k] + SAMPLE_STD * torch.randn(patterns[k].shape, generator=g)) / fmt.SCALE_FACTOR
        moments = torch.cat([mean, torch.full_like(mean, logvar)])[None].numpy().astype(np.float32)
        # Every (classes + 1)-th caption is empty, as uninformative web captions are: the unconditional
        # prediction that classifier-free guidance subtracts is then learnt too.
        empty = i % (len(captions) + 1) == len(captions)
        samples.append((f"{i:09d}", moments, "" if empty else captions[k]))
    for shard, first in enumerate(range(0, len(samples), SHARD_SAMPLES)):
        fmt.write_shard(os.path.join(out_dir, fmt.SHARD_DIR, f"{shard:05d}.tar"), samples[first:first + SHARD_SAMPLES])

    # Eval prompts and the FID statistics of reference images of them (4 draws per prompt).
    prompts = [captions[i % len(captions)] for i in range(d.eval_samples)]
    fmt.write_prompts(os.path.join(out_dir, fmt.PROMPTS_FILE), prompts)
    reference = torch.stack([patterns[i % len(captions)] for i in range(d.eval_samples)] * 4)
    reference = reference + 2 ** 0.5 * SAMPLE_STD * torch.randn(reference.shape, generator=g)
    with torch.no_grad():
        reference_images = decode_images(vae, reference, fmt.SCALE_FACTOR)
        # A random network's features barely vary; scale each (the last conv's output channel, exact through
        # ReLU and the mean pool) to unit spread over the reference images, so FID is of order 1 per dimension.
        last = feature_net.features[-2]
        spread = feature_net(reference_images).std(dim=0).clamp(min=1e-6)
        last.weight /= spread.view(-1, 1, 1, 1)
        last.bias /= spread
        features = feature_net(reference_images).numpy()
    mu, sigma = feature_statistics(features)
    np.savez(os.path.join(out_dir, fmt.STATS_FILE), mu=mu, sigma=sigma)

    # Weights in the real files' layouts.
    text_state = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
    ldm = {VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), len(vae_cfg["block_out_channels"]),
                                                      vae_cfg["layers_per_block"]).items()}
    ldm.update({TEXT_PREFIX + k: v for k, v in text_state.items()})
    torch.save({"state_dict": ldm}, os.path.join(out_dir, d.sd_checkpoint))
    torch.save(clip.state_dict(), os.path.join(out_dir, d.clip_checkpoint))
    torch.save(feature_net.state_dict(), os.path.join(out_dir, d.fid_weights))
